//! xmppd-loadgen: a lean c2s load generator (see bench/README.md).
//!
//! Scenarios print one JSON object on stdout and one human line on stderr.

mod muc;
mod offline;
mod procfs;
mod resume;
mod scram;
mod stats;
mod xmpp;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use procfs::{Snap, cpu_json};
use scram::KeyCache;
use serde_json::{Value, json};
use stats::Samples;
use std::future::Future;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::sync::{Semaphore, watch};
use xmpp::{Conn, Stanza, Target, Tls, TlsMode};

static EPOCH: OnceLock<Instant> = OnceLock::new();
static TLS_INFO: OnceLock<String> = OnceLock::new();

fn now_us() -> u64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_micros() as u64
}

#[derive(Parser, Clone)]
#[command(
    name = "loadgen",
    about = "c2s load generator for xmppd / ejabberd / Prosody"
)]
struct Cli {
    /// Server address (loopback only).
    #[arg(long, global = true, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, global = true, default_value_t = 5222)]
    port: u16,
    /// XMPP domain (stream `to`, SNI, JIDs).
    #[arg(long, global = true, default_value = "localhost")]
    domain: String,
    #[arg(long, global = true, value_enum, default_value = "starttls")]
    tls: TlsMode,
    /// First user number: users are PREFIX{N}@domain with password PASS{N}.
    #[arg(long, global = true, default_value_t = 0)]
    users_offset: u64,
    #[arg(long, global = true, default_value = "user")]
    user_prefix: String,
    #[arg(long, global = true, default_value = "pass")]
    pass_prefix: String,
    /// Free-form label copied into the JSON (e.g. the server's name).
    #[arg(long, global = true, default_value = "")]
    label: String,
    /// PID of the server under test: its CPU time and RSS are sampled around
    /// the measured phase.
    #[arg(long, global = true)]
    server_pid: Option<u32>,
    /// Tokio worker threads (1 = current-thread runtime).
    #[arg(long, global = true, default_value_t = 1)]
    threads: usize,
    /// Allow TLS session resumption (off: every login is a full handshake).
    #[arg(long, global = true)]
    tls_resume: bool,
    /// Seconds allowed for one login.
    #[arg(long, global = true, default_value_t = 30)]
    login_timeout: u64,
    /// File of SCRAM keys derived by earlier runs (loaded at start, saved at
    /// the end when new keys were derived): spares PBKDF2 when every session is
    /// a different user (idle).
    #[arg(long, global = true)]
    key_cache: Option<PathBuf>,
    /// Do not wait for the server's echo of the initial presence.
    #[arg(long, global = true)]
    no_wait_presence: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Clone)]
enum Cmd {
    /// C workers doing full logins (connect, TLS, SCRAM, bind, presence, close) for D seconds.
    Login {
        #[arg(long, default_value_t = 20)]
        workers: usize,
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// Size of the user pool cycled through.
        #[arg(long, default_value_t = 200)]
        users: u64,
        /// Skip the untimed first login of every user (which fills the SCRAM key cache).
        #[arg(long)]
        no_warmup: bool,
    },
    /// P online pairs exchanging messages both ways with a window of W unacknowledged each.
    Pairs {
        #[arg(long, default_value_t = 100)]
        pairs: u64,
        #[arg(long, default_value_t = 16)]
        window: usize,
        /// Offered messages/s over all senders (0 = as fast as the windows allow).
        #[arg(long, default_value_t = 0.0)]
        rate: f64,
        #[arg(long, default_value_t = 15.0)]
        duration: f64,
        /// Seconds to wait for in-flight messages after sending stops.
        #[arg(long, default_value_t = 10.0)]
        drain: f64,
        /// Extra body bytes per message.
        #[arg(long, default_value_t = 0)]
        body_bytes: usize,
        #[arg(long, default_value_t = 50)]
        login_concurrency: usize,
    },
    /// R occupants of one room; S of them post groupchat messages with a window
    /// of W unacknowledged each (their own reflected copy is the ack).
    Muc {
        #[arg(long, default_value_t = 100)]
        occupants: u64,
        /// Occupants that post (the first S of the pool).
        #[arg(long, default_value_t = 5)]
        senders: u64,
        #[arg(long, default_value_t = 16)]
        window: usize,
        /// Offered messages/s over all senders (0 = as fast as the windows allow).
        #[arg(long, default_value_t = 0.0)]
        rate: f64,
        #[arg(long, default_value_t = 15.0)]
        duration: f64,
        /// Seconds to wait for in-flight deliveries after sending stops.
        #[arg(long, default_value_t = 10.0)]
        drain: f64,
        /// Room JID (default bench@conference.DOMAIN).
        #[arg(long, default_value = "")]
        room: String,
        /// Extra body bytes per message.
        #[arg(long, default_value_t = 0)]
        body_bytes: usize,
        #[arg(long, default_value_t = 50)]
        login_concurrency: usize,
    },
    /// K messages from user 0 to user 1 while user 1 is offline; then user 1
    /// logs in and the time until all K arrive is measured.
    Offline {
        #[arg(long, default_value_t = 5000)]
        messages: u64,
        /// Store-then-drain rounds (figures are medians / sums over rounds).
        #[arg(long, default_value_t = 3)]
        rounds: u32,
        /// Seconds allowed for the store phase and for the drain, each.
        #[arg(long, default_value_t = 120.0)]
        timeout: f64,
        #[arg(long, default_value_t = 0)]
        body_bytes: usize,
    },
    /// N stream-management sessions, each repeatedly dropped (TCP reset) after
    /// receiving an unacknowledged message, resumed (XEP-0198) on a new
    /// connection, and checked for the message's redelivery.
    Resume {
        #[arg(long, default_value_t = 200)]
        sessions: u64,
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        #[arg(long, default_value_t = 50)]
        login_concurrency: usize,
        /// Seconds to wait for a delivery or for `<resumed/>`.
        #[arg(long, default_value_t = 10.0)]
        wait: f64,
    },
    /// M sessions logged in and available, held H seconds; server RSS sampled.
    Idle {
        #[arg(long, default_value_t = 2000)]
        sessions: u64,
        #[arg(long, default_value_t = 50)]
        concurrency: usize,
        #[arg(long, default_value_t = 30.0)]
        hold: f64,
        /// Source addresses 127.0.0.1..=127.0.0.N (0 = one per 20,000 sessions).
        #[arg(long, default_value_t = 0)]
        src_ips: u32,
    },
    /// Create users by XEP-0077 in-band registration.
    Register {
        #[arg(long)]
        count: u64,
        #[arg(long, default_value_t = 20)]
        concurrency: usize,
    },
    /// Write Prosody `internal_hashed` account files (SCRAM-SHA-1 keys) directly.
    ProsodyAccounts {
        /// Prosody's data_path.
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        count: u64,
        #[arg(long, default_value_t = 4096)]
        iterations: u32,
    },
}

struct Ctx {
    cli: Cli,
    target: Target,
    cache: KeyCache,
}

impl Ctx {
    fn user(&self, i: u64) -> (String, String) {
        let n = self.cli.users_offset + i;
        (
            format!("{}{n}", self.cli.user_prefix),
            format!("{}{n}", self.cli.pass_prefix),
        )
    }

    async fn login(&self, i: u64, resource: &str, src: Option<IpAddr>) -> Result<Conn<Tls>> {
        let (u, p) = self.user(i);
        let c = xmpp::login(&self.target, &u, &p, resource, src, &self.cache).await?;
        if TLS_INFO.get().is_none() {
            let s = c.io.get_ref().1;
            let v = s.protocol_version().map(|v| format!("{v:?}"));
            let c = s
                .negotiated_cipher_suite()
                .map(|c| format!("{:?}", c.suite()));
            let _ = TLS_INFO.set(format!(
                "{} {}",
                v.unwrap_or_default(),
                c.unwrap_or_default()
            ));
        }
        Ok(c)
    }

    fn base(&self, scenario: &str) -> serde_json::Map<String, Value> {
        let c = &self.cli;
        let mut m = serde_json::Map::new();
        m.insert("scenario".into(), json!(scenario));
        m.insert("label".into(), json!(c.label));
        m.insert("target".into(), json!(format!("{}:{}", c.host, c.port)));
        m.insert("domain".into(), json!(c.domain));
        m.insert(
            "tls_mode".into(),
            json!(format!("{:?}", c.tls).to_lowercase()),
        );
        m.insert("tls_resume".into(), json!(c.tls_resume));
        m.insert("wait_presence_echo".into(), json!(!c.no_wait_presence));
        m.insert("loadgen_threads".into(), json!(c.threads));
        m.insert(
            "unix_time".into(),
            json!(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0)
            ),
        );
        m
    }

    fn finish(&self, mut m: serde_json::Map<String, Value>) -> Value {
        m.insert("tls_negotiated".into(), json!(TLS_INFO.get()));
        m.insert(
            "scram_derivations".into(),
            json!(self.cache.derivations.load(Ordering::Relaxed)),
        );
        m.insert("loadgen_rss_kb".into(), json!(procfs::self_rss_kb()));
        Value::Object(m)
    }
}

/// Collects up to a few distinct error texts, and counts all.
#[derive(Default)]
struct Errors {
    count: AtomicU64,
    first: Mutex<Vec<String>>,
}

impl Errors {
    fn add(&self, e: &anyhow::Error) {
        self.count.fetch_add(1, Ordering::Relaxed);
        let mut f = self.first.lock().unwrap();
        let s = format!("{e:#}");
        if f.len() < 5 && !f.contains(&s) {
            f.push(s);
        }
    }
    fn json(&self) -> Value {
        json!({"count": self.count.load(Ordering::Relaxed), "examples": *self.first.lock().unwrap()})
    }
    fn n(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

/// Run `f(i)` for i in 0..n with at most `conc` at once; results by index.
async fn pool<T, F, Fut>(n: u64, conc: usize, f: F) -> Vec<Result<T>>
where
    T: Send + 'static,
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<T>> + Send + 'static,
{
    let f = Arc::new(f);
    let next = Arc::new(AtomicU64::new(0));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..conc.max(1).min(n.max(1) as usize) {
        let (f, next) = (f.clone(), next.clone());
        set.spawn(async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                out.push((i, f(i).await));
            }
            out
        });
    }
    let mut all: Vec<Option<Result<T>>> = (0..n).map(|_| None).collect();
    while let Some(r) = set.join_next().await {
        for (i, v) in r.expect("pool task panicked") {
            all[i as usize] = Some(v);
        }
    }
    all.into_iter()
        .map(|v| v.expect("every index ran"))
        .collect()
}

// ---------------------------------------------------------------- login

async fn scen_login(
    ctx: Arc<Ctx>,
    workers: usize,
    duration: f64,
    users: u64,
    warmup: bool,
) -> Result<Value> {
    let users = users.max(1);
    let warm_errors = Arc::new(Errors::default());
    if warmup {
        let (c2, e2) = (ctx.clone(), warm_errors.clone());
        pool(users, workers, move |i| {
            let (ctx, errs) = (c2.clone(), e2.clone());
            async move {
                match ctx.login(i, "warm", None).await {
                    Ok(c) => xmpp::close(c).await,
                    Err(e) => errs.add(&e),
                }
                Ok(())
            }
        })
        .await;
    }
    let errors = Arc::new(Errors::default());
    let counter = Arc::new(AtomicU64::new(0));
    let s0 = Snap::take(ctx.cli.server_pid);
    let deadline = s0.at + Duration::from_secs_f64(duration);
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..workers.max(1) {
        let (ctx, errors, counter) = (ctx.clone(), errors.clone(), counter.clone());
        set.spawn(async move {
            let mut lat = Samples::default();
            let mut closers = tokio::task::JoinSet::new();
            while Instant::now() < deadline {
                let k = counter.fetch_add(1, Ordering::Relaxed);
                let t0 = Instant::now();
                match ctx.login(k % users, &format!("l{k}"), None).await {
                    Ok(c) => {
                        lat.push_us(t0.elapsed().as_micros() as u64);
                        // the polite close (our </stream:stream>, wait for the
                        // server's, close_notify) runs on its own: ejabberd
                        // answers it ~100 ms later, which would otherwise bound
                        // the login rate instead of the server's CPU
                        closers.spawn(xmpp::close(c));
                    }
                    Err(e) => {
                        errors.add(&e);
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
                while closers.try_join_next().is_some() {}
            }
            (lat, closers)
        });
    }
    let mut lat = Samples::default();
    let mut closers = Vec::new();
    while let Some(r) = set.join_next().await {
        let (l, c) = r?;
        lat.merge(l);
        closers.push(c);
    }
    let s1 = Snap::take(ctx.cli.server_pid);
    for mut c in closers {
        while c.join_next().await.is_some() {}
    }
    let ok = lat.0.len() as u64;
    let wall = (s1.at - s0.at).as_secs_f64();
    let mut m = ctx.base("login");
    m.insert("workers".into(), json!(workers));
    m.insert("duration_s".into(), json!(duration));
    m.insert("user_pool".into(), json!(users));
    m.insert("warmup_errors".into(), warm_errors.json());
    m.insert("logins".into(), json!(ok));
    m.insert("errors".into(), errors.json());
    m.insert("logins_per_s".into(), json!(ok as f64 / wall));
    m.insert("login_latency".into(), lat.summary());
    m.insert("cpu".into(), cpu_json(&s0, &s1, ok));
    eprintln!(
        "[{}] login: {} logins in {:.1}s = {:.0}/s, p50 {} µs p99 {} µs, errors {}",
        ctx.cli.label,
        ok,
        wall,
        ok as f64 / wall,
        m["login_latency"]["p50_us"],
        m["login_latency"]["p99_us"],
        errors.n()
    );
    Ok(ctx.finish(m))
}

// ---------------------------------------------------------------- pairs

/// One direction of a pair: sender's window and counters.
struct Dir {
    sem: Semaphore,
    sent: AtomicU64,
}

#[derive(Default)]
struct RecvStats {
    lat: Samples,
    received: u64,
    reordered: u64,
    gaps: u64,
    error_msgs: u64,
    other: u64,
    pings: u64,
    dropped: bool,
    last_at: Option<Instant>,
}

type WriteHalf = tokio::io::WriteHalf<Tls>;
type SharedW = Arc<tokio::sync::Mutex<WriteHalf>>;

/// Polite close of every stream, all at once.
async fn close_all(writers: Vec<SharedW>) {
    let mut set = tokio::task::JoinSet::new();
    for w in writers {
        set.spawn(async move {
            let mut w = w.lock().await;
            let _ = w.write_all(b"</stream:stream>").await;
            let _ = w.shutdown().await;
        });
    }
    while set.join_next().await.is_some() {}
}

/// The later of two optional instants (the last receipt over all receivers).
fn latest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

async fn receiver(
    mut c: Conn<tokio::io::ReadHalf<Tls>>,
    dir: Arc<Dir>,
    w: SharedW,
    mut stop: watch::Receiver<bool>,
    outstanding: Arc<AtomicI64>,
) -> RecvStats {
    let mut st = RecvStats::default();
    let mut max_seq = 0u64;
    'outer: loop {
        while let Some(s) = c.next_stanza() {
            let (name, all) = match s {
                Stanza::Element { name, all } => (name, all),
                Stanza::Close => {
                    st.dropped = true;
                    break 'outer;
                }
            };
            let name = &c.buf[name.0..name.1];
            let s = &c.buf[all.0..all.1];
            if name == b"message" {
                let head_end = memchr::memchr(b'>', s).unwrap_or(s.len());
                let head = &s[..head_end];
                if memchr::memmem::find(head, b"type='error'").is_some()
                    || memchr::memmem::find(head, b"type=\"error\"").is_some()
                {
                    st.error_msgs += 1;
                    continue;
                }
                let Some(body) = xmpp::element_text(s, b"<body", b"</body>") else {
                    st.other += 1;
                    continue;
                };
                let mut it = body.split(|b| *b == b' ');
                let seq = it.next().and_then(parse_u64);
                let ts = it.next().and_then(parse_u64);
                let (Some(seq), Some(ts)) = (seq, ts) else {
                    st.other += 1;
                    continue;
                };
                st.lat.push_us(now_us().saturating_sub(ts));
                st.received += 1;
                if seq <= max_seq {
                    st.reordered += 1;
                } else {
                    if seq > max_seq + 1 {
                        st.gaps += 1;
                    }
                    max_seq = seq;
                }
                dir.sem.add_permits(1);
                outstanding.fetch_sub(1, Ordering::Relaxed);
                st.last_at = Some(Instant::now());
            } else if name == b"iq"
                && memchr::memmem::find(s, b"urn:xmpp:ping").is_some()
                && (memchr::memmem::find(s, b"type='get'").is_some()
                    || memchr::memmem::find(s, b"type=\"get\"").is_some())
            {
                st.pings += 1;
                if let Some(reply) = ping_reply(s) {
                    let mut w = w.lock().await;
                    let _ = w.write_all(&reply).await;
                    let _ = w.flush().await;
                }
            } else {
                st.other += 1;
            }
        }
        tokio::select! {
            biased;
            _ = stop.changed() => break,
            r = c.fill() => if r.is_err() { st.dropped = true; break }
        }
    }
    st
}

fn parse_u64(b: &[u8]) -> Option<u64> {
    if b.is_empty() || b.len() > 19 {
        return None;
    }
    let mut v = 0u64;
    for d in b {
        if !d.is_ascii_digit() {
            return None;
        }
        v = v * 10 + (d - b'0') as u64;
    }
    Some(v)
}

/// `<iq type='result' id=ID to=FROM/>` for a ping `<iq>`.
fn ping_reply(iq: &[u8]) -> Option<Vec<u8>> {
    let head = &iq[..memchr::memchr(b'>', iq)?];
    let attr = |name: &[u8]| -> Option<String> {
        for q in [b'\'', b'"'] {
            let mut pat = name.to_vec();
            pat.push(b'=');
            pat.push(q);
            if let Some(i) = memchr::memmem::find(head, &pat) {
                let v = &head[i + pat.len()..];
                let j = memchr::memchr(q, v)?;
                return Some(String::from_utf8_lossy(&v[..j]).into_owned());
            }
        }
        None
    };
    let id = attr(b" id")?;
    let to = attr(b" from")
        .map(|f| format!(" to='{f}'"))
        .unwrap_or_default();
    Some(format!("<iq type='result' id='{id}'{to}/>").into_bytes())
}

#[allow(clippy::too_many_arguments)]
async fn sender(
    w: SharedW,
    dir: Arc<Dir>,
    to: String,
    rate: f64,
    phase: f64,
    start: Instant,
    deadline: Instant,
    pad: Arc<String>,
    outstanding: Arc<AtomicI64>,
    kind: &'static str,
    prefix: String,
) -> (u64, u64, Option<String>) {
    const MAX_BATCH: u64 = 64;
    let mut seq = 0u64;
    let mut stalls = 0u64;
    let mut buf = Vec::with_capacity(8192);
    tokio::time::sleep_until(start.into()).await;
    loop {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        let due = if rate > 0.0 {
            let t = (now - start).as_secs_f64() - phase;
            let total = if t < 0.0 {
                0
            } else {
                (t * rate).floor() as u64 + 1
            };
            total.saturating_sub(seq)
        } else {
            MAX_BATCH
        };
        if due == 0 {
            let next = start + Duration::from_secs_f64(phase + seq as f64 / rate);
            tokio::time::sleep_until(next.min(deadline).into()).await;
            continue;
        }
        let due = due.min(MAX_BATCH);
        match dir.sem.try_acquire() {
            Ok(p) => p.forget(),
            Err(_) => {
                stalls += 1;
                tokio::select! {
                    p = dir.sem.acquire() => match p { Ok(p) => p.forget(), Err(_) => break },
                    _ = tokio::time::sleep_until(deadline.into()) => break,
                }
            }
        }
        let mut n = 1;
        while n < due {
            match dir.sem.try_acquire() {
                Ok(p) => {
                    p.forget();
                    n += 1;
                }
                Err(_) => break,
            }
        }
        buf.clear();
        let ts = now_us();
        for _ in 0..n {
            seq += 1;
            let _ = write!(
                buf,
                "<message to='{to}' type='{kind}' id='m{seq}'><body>{prefix}{seq} {ts}{pad}</body></message>"
            );
        }
        dir.sent.fetch_add(n, Ordering::Relaxed);
        outstanding.fetch_add(n as i64, Ordering::Relaxed);
        let mut w = w.lock().await;
        let r = async {
            w.write_all(&buf).await?;
            w.flush().await
        }
        .await;
        if let Err(e) = r {
            return (seq, stalls, Some(format!("write: {e}")));
        }
    }
    (seq, stalls, None)
}

#[allow(clippy::too_many_arguments)]
async fn scen_pairs(
    ctx: Arc<Ctx>,
    pairs: u64,
    window: usize,
    rate: f64,
    duration: f64,
    drain: f64,
    body_bytes: usize,
    login_conc: usize,
) -> Result<Value> {
    let n = pairs * 2;
    let login_errors = Errors::default();
    let c2 = ctx.clone();
    let t_login = Instant::now();
    let conns = pool(n, login_conc, move |i| {
        let ctx = c2.clone();
        async move { ctx.login(i, "pair", None).await }
    })
    .await;
    let login_s = t_login.elapsed().as_secs_f64();
    let mut conns: Vec<Option<Conn<Tls>>> = conns
        .into_iter()
        .map(|r| match r {
            Ok(c) => Some(c),
            Err(e) => {
                login_errors.add(&e);
                None
            }
        })
        .collect();
    if login_errors.n() > 0 {
        bail!(
            "{} of {n} logins failed, e.g. {:?}",
            login_errors.n(),
            login_errors.first.lock().unwrap()
        );
    }
    let senders_total = n as f64;
    let rate_each = if rate > 0.0 {
        rate / senders_total
    } else {
        0.0
    };
    let pad = Arc::new(if body_bytes > 0 {
        format!(" {}", "x".repeat(body_bytes))
    } else {
        String::new()
    });
    let outstanding = Arc::new(AtomicI64::new(0));
    let (stop_tx, stop_rx) = watch::channel(false);
    // directions: dirs[i] = traffic *into* connection i (from its peer)
    let dirs: Vec<Arc<Dir>> = (0..n)
        .map(|_| {
            Arc::new(Dir {
                sem: Semaphore::new(window.max(1)),
                sent: AtomicU64::new(0),
            })
        })
        .collect();
    let mut writers: Vec<SharedW> = Vec::new();
    let mut readers = Vec::new();
    for (i, c) in conns.iter_mut().enumerate() {
        let c = c.take().expect("logged in");
        let (io, rest) = c.into_parts();
        let (r, w) = tokio::io::split(io);
        let w = Arc::new(tokio::sync::Mutex::new(w));
        let mut rc = Conn::new(r);
        rc.buf.extend_from_slice(&rest);
        readers.push((i, rc));
        writers.push(w);
    }
    let s0 = Snap::take(ctx.cli.server_pid);
    let start = Instant::now() + Duration::from_millis(20);
    let deadline = start + Duration::from_secs_f64(duration);
    let mut rset = tokio::task::JoinSet::new();
    for (i, rc) in readers {
        rset.spawn(receiver(
            rc,
            dirs[i].clone(),
            writers[i].clone(),
            stop_rx.clone(),
            outstanding.clone(),
        ));
    }
    let mut sset = tokio::task::JoinSet::new();
    #[allow(clippy::needless_range_loop)]
    for i in 0..n as usize {
        let peer = i ^ 1;
        let (peer_user, _) = ctx.user(peer as u64);
        let to = format!("{peer_user}@{}/pair", ctx.cli.domain);
        let phase = if rate_each > 0.0 {
            (i as f64 / senders_total) / rate_each
        } else {
            0.0
        };
        sset.spawn(sender(
            writers[i].clone(),
            dirs[peer].clone(),
            to,
            rate_each,
            phase,
            start,
            deadline,
            pad.clone(),
            outstanding.clone(),
            "chat",
            String::new(),
        ));
    }
    let (mut sent, mut stalls) = (0u64, 0u64);
    let send_errors = Errors::default();
    while let Some(r) = sset.join_next().await {
        let (s, st, e) = r?;
        sent += s;
        stalls += st;
        if let Some(e) = e {
            send_errors.add(&anyhow::anyhow!(e));
        }
    }
    let send_end = Instant::now();
    let drain_deadline = send_end + Duration::from_secs_f64(drain);
    while outstanding.load(Ordering::Relaxed) > 0 && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let s1 = Snap::take(ctx.cli.server_pid);
    let _ = stop_tx.send(true);
    let mut agg = RecvStats::default();
    let mut last: Option<Instant> = None;
    let mut dropped = 0u64;
    while let Some(r) = rset.join_next().await {
        let st = r?;
        agg.lat.merge(st.lat);
        agg.received += st.received;
        agg.reordered += st.reordered;
        agg.gaps += st.gaps;
        agg.error_msgs += st.error_msgs;
        agg.other += st.other;
        agg.pings += st.pings;
        dropped += st.dropped as u64;
        last = latest(last, st.last_at);
    }
    close_all(writers).await;
    let active = last.map(|l| (l - start).as_secs_f64()).unwrap_or(duration);
    let lost = sent.saturating_sub(agg.received);
    let mut m = ctx.base("pairs");
    m.insert("pairs".into(), json!(pairs));
    m.insert("window".into(), json!(window));
    m.insert(
        "rate_offered".into(),
        json!(if rate > 0.0 {
            json!(rate)
        } else {
            json!("unlimited")
        }),
    );
    m.insert("duration_s".into(), json!(duration));
    m.insert("body_extra_bytes".into(), json!(body_bytes));
    m.insert("login_phase_s".into(), json!(login_s));
    m.insert("sent".into(), json!(sent));
    m.insert("delivered".into(), json!(agg.received));
    m.insert("lost".into(), json!(lost));
    m.insert("reordered".into(), json!(agg.reordered));
    m.insert("seq_gaps".into(), json!(agg.gaps));
    m.insert("error_messages".into(), json!(agg.error_msgs));
    m.insert("other_stanzas".into(), json!(agg.other));
    m.insert("pings_answered".into(), json!(agg.pings));
    m.insert("sessions_dropped".into(), json!(dropped));
    m.insert("send_errors".into(), send_errors.json());
    m.insert("window_stalls".into(), json!(stalls));
    m.insert("sent_per_s".into(), json!(sent as f64 / duration));
    m.insert(
        "delivered_per_s".into(),
        json!(agg.received as f64 / active),
    );
    m.insert("latency".into(), agg.lat.summary());
    m.insert("cpu".into(), cpu_json(&s0, &s1, agg.received));
    eprintln!(
        "[{}] pairs: {} sent, {} delivered = {:.0}/s, p50 {} p99 {} p99.9 {} µs, lost {} reordered {} errors {}",
        ctx.cli.label,
        sent,
        agg.received,
        agg.received as f64 / active,
        m["latency"]["p50_us"],
        m["latency"]["p99_us"],
        m["latency"]["p999_us"],
        lost,
        agg.reordered,
        agg.error_msgs + send_errors.n()
    );
    Ok(ctx.finish(m))
}

// ---------------------------------------------------------------- idle

async fn scen_idle(
    ctx: Arc<Ctx>,
    sessions: u64,
    conc: usize,
    hold: f64,
    src_ips: u32,
) -> Result<Value> {
    let src_ips = if src_ips == 0 {
        1 + (sessions / 20_000) as u32
    } else {
        src_ips
    }
    .clamp(1, 250);
    let s_base = Snap::take(ctx.cli.server_pid);
    let sem = Arc::new(Semaphore::new(conc.max(1)));
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(Errors::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let lat = Arc::new(Mutex::new(Samples::default()));
    let mut set = tokio::task::JoinSet::new();
    let t0 = Instant::now();
    for i in 0..sessions {
        let (ctx, sem, done, errors, lat) = (
            ctx.clone(),
            sem.clone(),
            done.clone(),
            errors.clone(),
            lat.clone(),
        );
        let mut stop = stop_rx.clone();
        set.spawn(async move {
            let src = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + (i % src_ips as u64) as u8));
            let permit = sem.acquire().await.expect("semaphore");
            let t = Instant::now();
            let r = ctx.login(i, "idle", Some(src)).await;
            drop(permit);
            let mut c = match r {
                Ok(c) => {
                    lat.lock().unwrap().push_us(t.elapsed().as_micros() as u64);
                    done.fetch_add(1, Ordering::Relaxed);
                    c
                }
                Err(e) => {
                    errors.add(&e);
                    done.fetch_add(1, Ordering::Relaxed);
                    return (false, false, 0u64);
                }
            };
            // hold: answer pings, notice drops
            let mut pings = 0;
            let dropped = 'hold: loop {
                while let Some(s) = c.next_stanza() {
                    match s {
                        Stanza::Close => break 'hold true,
                        Stanza::Element { name, all } => {
                            let s = &c.buf[all.0..all.1];
                            if &c.buf[name.0..name.1] == b"iq"
                                && memchr::memmem::find(s, b"urn:xmpp:ping").is_some()
                                && let Some(r) = ping_reply(s)
                            {
                                pings += 1;
                                let _ = c.send(&r).await;
                            }
                        }
                    }
                }
                tokio::select! {
                    biased;
                    _ = stop.changed() => break false,
                    r = c.fill() => if r.is_err() { break true },
                }
            };
            if !dropped {
                xmpp::close(c).await;
            }
            (true, dropped, pings)
        });
    }
    while done.load(Ordering::Relaxed) < sessions {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let login_s = t0.elapsed().as_secs_f64();
    let s_login = Snap::take(ctx.cli.server_pid);
    let ok = sessions - errors.n();
    // let the server settle (presence broadcasts, allocator) before sampling RSS
    tokio::time::sleep(Duration::from_secs(1)).await;
    let s1 = Snap::take(ctx.cli.server_pid);
    tokio::time::sleep(Duration::from_secs_f64(hold)).await;
    let s2 = Snap::take(ctx.cli.server_pid);
    let _ = stop_tx.send(true);
    let (mut dropped, mut pings) = (0u64, 0u64);
    while let Some(r) = set.join_next().await {
        let (_, d, p) = r?;
        dropped += d as u64;
        pings += p;
    }
    let rss_per = match (s_base.server_rss, s2.server_rss) {
        (Some(a), Some(b)) if ok > 0 => Some((b as f64 - a as f64) / ok as f64),
        _ => None,
    };
    let mut m = ctx.base("idle");
    m.insert("sessions".into(), json!(sessions));
    m.insert("logged_in".into(), json!(ok));
    m.insert("login_concurrency".into(), json!(conc));
    m.insert("source_ips".into(), json!(src_ips));
    m.insert("errors".into(), errors.json());
    m.insert("login_phase_s".into(), json!(login_s));
    m.insert("logins_per_s".into(), json!(ok as f64 / login_s));
    m.insert("login_latency".into(), lat.lock().unwrap().summary());
    m.insert("hold_s".into(), json!(hold));
    m.insert("dropped_during_hold".into(), json!(dropped));
    m.insert("pings_answered".into(), json!(pings));
    m.insert("server_rss_kb_before".into(), json!(s_base.server_rss));
    m.insert("server_rss_kb_logged_in".into(), json!(s1.server_rss));
    m.insert("server_rss_kb_after_hold".into(), json!(s2.server_rss));
    m.insert("server_rss_kb_per_session".into(), json!(rss_per));
    m.insert("login_cpu".into(), cpu_json(&s_base, &s_login, ok));
    m.insert("hold_cpu".into(), cpu_json(&s1, &s2, ok));
    eprintln!(
        "[{}] idle: {ok}/{sessions} sessions in {login_s:.1}s, server RSS {:?} -> {:?} kB ({:.1} kB/session), errors {}, dropped {dropped}",
        ctx.cli.label,
        s_base.server_rss,
        s2.server_rss,
        rss_per.unwrap_or(f64::NAN),
        errors.n()
    );
    Ok(ctx.finish(m))
}

// ---------------------------------------------------------------- setup helpers

async fn cmd_register(ctx: Arc<Ctx>, count: u64, conc: usize) -> Result<Value> {
    let t0 = Instant::now();
    let c2 = ctx.clone();
    let res = pool(count, conc, move |i| {
        let ctx = c2.clone();
        async move {
            let (u, p) = ctx.user(i);
            xmpp::register(&ctx.target, &u, &p).await
        }
    })
    .await;
    let (mut created, mut existed) = (0, 0);
    let errors = Errors::default();
    for r in res {
        match r {
            Ok(true) => created += 1,
            Ok(false) => existed += 1,
            Err(e) => errors.add(&e),
        }
    }
    let mut m = ctx.base("register");
    m.insert("count".into(), json!(count));
    m.insert("created".into(), json!(created));
    m.insert("existed".into(), json!(existed));
    m.insert("errors".into(), errors.json());
    m.insert("seconds".into(), json!(t0.elapsed().as_secs_f64()));
    eprintln!(
        "[{}] register: {created} created, {existed} existed, {} errors in {:.1}s",
        ctx.cli.label,
        errors.n(),
        t0.elapsed().as_secs_f64()
    );
    if errors.n() > 0 {
        eprintln!("  e.g. {:?}", errors.first.lock().unwrap());
    }
    Ok(ctx.finish(m))
}

/// Prosody's datamanager file-name encoding: non-alphanumerics as %xx.
fn prosody_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02x}")
            }
        })
        .collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn cmd_prosody_accounts(
    cli: &Cli,
    dir: &std::path::Path,
    count: u64,
    iterations: u32,
) -> Result<Value> {
    let adir = dir.join(prosody_encode(&cli.domain)).join("accounts");
    std::fs::create_dir_all(&adir).with_context(|| format!("mkdir {}", adir.display()))?;
    let t0 = Instant::now();
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1) as u64;
    let written = AtomicU64::new(0);
    std::thread::scope(|s| {
        for t in 0..threads {
            let (adir, written) = (&adir, &written);
            s.spawn(move || -> Result<()> {
                let mut i = t;
                while i < count {
                    let n = cli.users_offset + i;
                    let user = format!("{}{n}", cli.user_prefix);
                    let pass = format!("{}{n}", cli.pass_prefix);
                    let path = adir.join(format!("{}.dat", prosody_encode(&user)));
                    if !path.exists() {
                        let mut salt = [0u8; 16];
                        getrandom::fill(&mut salt).expect("getrandom");
                        let salt = hex(&salt);
                        let k = scram::Keys::derive(pass.as_bytes(), salt.as_bytes(), iterations);
                        let body = format!(
                            "return {{\n\t[\"iteration_count\"] = {iterations};\n\t[\"salt\"] = \"{salt}\";\n\t[\"server_key\"] = \"{}\";\n\t[\"stored_key\"] = \"{}\";\n}};\n",
                            hex(k.server_key()),
                            hex(k.stored_key())
                        );
                        std::fs::write(&path, body)?;
                        written.fetch_add(1, Ordering::Relaxed);
                    }
                    i += threads;
                }
                Ok(())
            });
        }
    });
    let w = written.load(Ordering::Relaxed);
    eprintln!(
        "prosody-accounts: wrote {w} new account files under {} in {:.1}s",
        adir.display(),
        t0.elapsed().as_secs_f64()
    );
    Ok(json!({"scenario": "prosody-accounts", "dir": adir, "count": count, "written": w}))
}

fn raise_nofile() {
    // SAFETY: plain getrlimit/setrlimit on our own process.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let _ = now_us();
    raise_nofile();
    let addr: SocketAddr = (cli.host.as_str(), cli.port)
        .to_socket_addrs()?
        .next()
        .context("host does not resolve")?;
    if !addr.ip().is_loopback() {
        bail!("refusing non-loopback target {addr}: this tool is for local benchmarks only");
    }
    if let Cmd::ProsodyAccounts {
        dir,
        count,
        iterations,
    } = &cli.cmd
    {
        let v = cmd_prosody_accounts(&cli, dir, *count, *iterations)?;
        println!("{v}");
        return Ok(());
    }
    let target = Target::new(
        addr,
        &cli.domain,
        cli.tls,
        cli.tls_resume,
        Duration::from_secs(cli.login_timeout),
        !cli.no_wait_presence,
    )?;
    let cache = KeyCache::default();
    if let Some(p) = &cli.key_cache {
        let n = cache.load(p);
        eprintln!("key cache: {n} keys loaded from {}", p.display());
    }
    let ctx = Arc::new(Ctx {
        cli: cli.clone(),
        target,
        cache: cache.clone(),
    });
    let rt = if cli.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cli.threads)
            .enable_all()
            .build()?
    };
    let v = rt.block_on(async move {
        match cli.cmd {
            Cmd::Login {
                workers,
                duration,
                users,
                no_warmup,
            } => scen_login(ctx, workers, duration.min(3600.0), users, !no_warmup).await,
            Cmd::Pairs {
                pairs,
                window,
                rate,
                duration,
                drain,
                body_bytes,
                login_concurrency,
            } => {
                scen_pairs(
                    ctx,
                    pairs,
                    window,
                    rate,
                    duration.min(3600.0),
                    drain.min(600.0),
                    body_bytes,
                    login_concurrency,
                )
                .await
            }
            Cmd::Idle {
                sessions,
                concurrency,
                hold,
                src_ips,
            } => scen_idle(ctx, sessions, concurrency, hold.min(3600.0), src_ips).await,
            Cmd::Muc {
                occupants,
                senders,
                window,
                rate,
                duration,
                drain,
                room,
                body_bytes,
                login_concurrency,
            } => {
                muc::scen_muc(
                    ctx,
                    muc::MucArgs {
                        occupants,
                        senders,
                        window,
                        rate,
                        duration: duration.min(3600.0),
                        drain: drain.min(600.0),
                        room,
                        body_bytes,
                        login_conc: login_concurrency,
                    },
                )
                .await
            }
            Cmd::Offline {
                messages,
                rounds,
                timeout,
                body_bytes,
            } => {
                offline::scen_offline(
                    ctx,
                    offline::OfflineArgs {
                        messages,
                        rounds: rounds.min(100),
                        timeout: timeout.min(3600.0),
                        body_bytes,
                    },
                )
                .await
            }
            Cmd::Resume {
                sessions,
                duration,
                login_concurrency,
                wait,
            } => {
                resume::scen_resume(
                    ctx,
                    resume::ResumeArgs {
                        sessions,
                        duration: duration.min(3600.0),
                        login_conc: login_concurrency,
                        wait: wait.min(600.0),
                    },
                )
                .await
            }
            Cmd::Register { count, concurrency } => cmd_register(ctx, count, concurrency).await,
            Cmd::ProsodyAccounts { .. } => unreachable!(),
        }
    })?;
    if let Some(p) = &cli.key_cache
        && cache.derivations.load(Ordering::Relaxed) > 0
        && let Err(e) = cache.save(p)
    {
        eprintln!("key cache: cannot save {}: {e}", p.display());
    }
    println!("{v}");
    Ok(())
}
