//! `muc`: R occupants in one room, S of them posting groupchat messages with
//! a window of unacknowledged messages each (a sender's own reflected copy is
//! its acknowledgement); every occupant counts what it receives.

use crate::procfs::{Snap, cpu_json};
use crate::stats::Samples;
use crate::xmpp::{self, Conn, Stanza, Tls};
use crate::{
    Ctx, Dir, Errors, SharedW, close_all, latest, now_us, parse_u64, ping_reply, pool, sender,
};
use anyhow::{Result, bail};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::sync::{Semaphore, watch};

pub struct MucArgs {
    pub occupants: u64,
    pub senders: u64,
    pub window: usize,
    pub rate: f64,
    pub duration: f64,
    pub drain: f64,
    pub room: String,
    pub body_bytes: usize,
    pub login_conc: usize,
}

const NS_MUC: &str = "http://jabber.org/protocol/muc";

fn has_status(s: &[u8], code: &[u8]) -> bool {
    let a = [b"code='".as_slice(), code, b"'"].concat();
    let b = [b"code=\"".as_slice(), code, b"\""].concat();
    memchr::memmem::find(s, &a).is_some() || memchr::memmem::find(s, &b).is_some()
}

fn is_type(s: &[u8], t: &[u8]) -> bool {
    xmpp::attr(s, b"type") == Some(t)
}

/// Send the join presence (no history) and wait for our own occupant
/// presence. Ok(true) when the server says it created the room (status 201).
async fn join(c: &mut Conn<Tls>, room: &str, nick: &str, timeout: Duration) -> Result<bool> {
    let deadline = Instant::now() + timeout;
    c.send(
        format!(
            "<presence to='{room}/{nick}'><x xmlns='{NS_MUC}'><history maxstanzas='0'/></x></presence>"
        )
        .as_bytes(),
    )
    .await?;
    let me = format!("{room}/{nick}");
    loop {
        let (name, s) = c.next_element(deadline).await?;
        if name == b"presence" && xmpp::attr(&s, b"from") == Some(me.as_bytes()) {
            if is_type(&s, b"error") {
                bail!("join refused: {}", String::from_utf8_lossy(&s));
            }
            return Ok(has_status(&s, b"201"));
        }
        if name == b"iq"
            && is_type(&s, b"get")
            && let Some(r) = ping_reply(&s)
        {
            c.send(&r).await?;
        }
    }
}

/// Accept the default configuration of a newly created (locked) room:
/// an empty `jabber:x:data` submit form to the owner namespace.
async fn configure(c: &mut Conn<Tls>, room: &str, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    c.send(
        format!(
            "<iq type='set' id='muccfg1' to='{room}'><query xmlns='{NS_MUC}#owner'>\
             <x xmlns='jabber:x:data' type='submit'/></query></iq>"
        )
        .as_bytes(),
    )
    .await?;
    loop {
        let (name, s) = c.next_element(deadline).await?;
        if name == b"iq" && xmpp::attr(&s, b"id") == Some(b"muccfg1".as_slice()) {
            if is_type(&s, b"result") {
                return Ok(());
            }
            bail!(
                "room configuration refused: {}",
                String::from_utf8_lossy(&s)
            );
        }
    }
}

#[derive(Default)]
struct MucRecv {
    lat: Samples,
    received: u64,
    reordered: u64,
    error_msgs: u64,
    other: u64,
    pings: u64,
    dropped: bool,
    last_at: Option<Instant>,
}

/// One occupant's reader: counts groupchat deliveries `SENDER SEQ TS`, and
/// returns the window credit when the message is its own.
async fn receiver(
    mut c: Conn<tokio::io::ReadHalf<Tls>>,
    me: usize,
    dirs: Arc<Vec<Arc<Dir>>>,
    w: SharedW,
    mut stop: watch::Receiver<bool>,
    delivered: Arc<AtomicU64>,
) -> MucRecv {
    let mut st = MucRecv::default();
    let mut max_seq = vec![0u64; dirs.len()];
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
                    // the subject after joining, and the like
                    st.other += 1;
                    continue;
                };
                let mut it = body.split(|b| *b == b' ');
                let from = it.next().and_then(parse_u64);
                let seq = it.next().and_then(parse_u64);
                let ts = it.next().and_then(parse_u64);
                let (Some(from), Some(seq), Some(ts)) = (from, seq, ts) else {
                    st.other += 1;
                    continue;
                };
                let from = from as usize;
                if from >= dirs.len() {
                    st.other += 1;
                    continue;
                }
                st.lat.push_us(now_us().saturating_sub(ts));
                st.received += 1;
                if seq <= max_seq[from] {
                    st.reordered += 1;
                } else {
                    max_seq[from] = seq;
                }
                if from == me {
                    dirs[me].sem.add_permits(1);
                }
                delivered.fetch_add(1, Ordering::Relaxed);
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
            } else if name != b"presence" {
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

pub async fn scen_muc(ctx: Arc<Ctx>, a: MucArgs) -> Result<Value> {
    let n = a.occupants.max(1);
    let senders = a.senders.clamp(1, n);
    let room = if a.room.is_empty() {
        format!("bench@conference.{}", ctx.cli.domain)
    } else {
        a.room.clone()
    };
    let step_timeout = Duration::from_secs(ctx.cli.login_timeout);
    let t_login = Instant::now();
    let c2 = ctx.clone();
    let conns = pool(n, a.login_conc, move |i| {
        let ctx = c2.clone();
        async move { ctx.login(i, "muc", None).await }
    })
    .await;
    let login_errors = Errors::default();
    let mut conns: Vec<Conn<Tls>> = conns
        .into_iter()
        .filter_map(|r| r.map_err(|e| login_errors.add(&e)).ok())
        .collect();
    if login_errors.n() > 0 {
        bail!(
            "{} of {n} logins failed, e.g. {:?}",
            login_errors.n(),
            login_errors.first.lock().unwrap()
        );
    }
    // The first occupant creates the room (and accepts the default configuration).
    let t_join = Instant::now();
    let created = join(&mut conns[0], &room, "n0", step_timeout).await?;
    if created {
        configure(&mut conns[0], &room, step_timeout).await?;
    }
    // Everyone else joins, a few at a time.
    let mut rest: Vec<Option<Conn<Tls>>> = conns.drain(1..).map(Some).collect();
    let sem = Arc::new(Semaphore::new(a.login_conc.max(1)));
    let mut set = tokio::task::JoinSet::new();
    for (k, c) in rest.iter_mut().enumerate() {
        let mut c = c.take().expect("conn");
        let (sem, room) = (sem.clone(), room.clone());
        set.spawn(async move {
            let _p = sem.acquire().await.expect("semaphore");
            let r = join(&mut c, &room, &format!("n{}", k + 1), step_timeout).await;
            (k + 1, c, r)
        });
    }
    let join_errors = Errors::default();
    let mut joined: Vec<Option<Conn<Tls>>> = (0..n).map(|_| None).collect();
    joined[0] = Some(conns.pop().expect("first occupant"));
    while let Some(r) = set.join_next().await {
        let (i, c, res) = r?;
        if let Err(e) = res {
            join_errors.add(&e);
        }
        joined[i] = Some(c);
    }
    if join_errors.n() > 0 {
        bail!(
            "{} of {n} joins failed, e.g. {:?}",
            join_errors.n(),
            join_errors.first.lock().unwrap()
        );
    }
    let join_s = t_join.elapsed().as_secs_f64();
    let login_s = (t_join - t_login).as_secs_f64();

    let dirs: Arc<Vec<Arc<Dir>>> = Arc::new(
        (0..senders)
            .map(|_| {
                Arc::new(Dir {
                    sem: Semaphore::new(a.window.max(1)),
                    sent: AtomicU64::new(0),
                })
            })
            .collect(),
    );
    let delivered = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut writers: Vec<SharedW> = Vec::new();
    let mut rset = tokio::task::JoinSet::new();
    for (i, c) in joined.into_iter().enumerate() {
        let (io, rest) = c.expect("joined").into_parts();
        let (r, w) = tokio::io::split(io);
        let w = Arc::new(tokio::sync::Mutex::new(w));
        let mut rc = Conn::new(r);
        rc.buf.extend_from_slice(&rest);
        rset.spawn(receiver(
            rc,
            i,
            dirs.clone(),
            w.clone(),
            stop_rx.clone(),
            delivered.clone(),
        ));
        writers.push(w);
    }
    // let the join presences and subjects settle before measuring
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stray = delivered.load(Ordering::Relaxed);

    let rate_each = if a.rate > 0.0 {
        a.rate / senders as f64
    } else {
        0.0
    };
    let pad = Arc::new(if a.body_bytes > 0 {
        format!(" {}", "x".repeat(a.body_bytes))
    } else {
        String::new()
    });
    let unused = Arc::new(AtomicI64::new(0));
    let s0 = Snap::take(ctx.cli.server_pid);
    let start = Instant::now() + Duration::from_millis(20);
    let deadline = start + Duration::from_secs_f64(a.duration);
    let mut sset = tokio::task::JoinSet::new();
    for i in 0..senders as usize {
        let phase = if rate_each > 0.0 {
            (i as f64 / senders as f64) / rate_each
        } else {
            0.0
        };
        sset.spawn(sender(
            writers[i].clone(),
            dirs[i].clone(),
            room.clone(),
            rate_each,
            phase,
            start,
            deadline,
            pad.clone(),
            unused.clone(),
            "groupchat",
            format!("{i} "),
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
    let expected = sent * n;
    let drain_deadline = Instant::now() + Duration::from_secs_f64(a.drain);
    while delivered.load(Ordering::Relaxed) < expected + stray && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let s1 = Snap::take(ctx.cli.server_pid);
    let _ = stop_tx.send(true);
    let mut agg = MucRecv::default();
    let mut last: Option<Instant> = None;
    let mut dropped = 0u64;
    while let Some(r) = rset.join_next().await {
        let st = r?;
        agg.lat.merge(st.lat);
        agg.received += st.received;
        agg.reordered += st.reordered;
        agg.error_msgs += st.error_msgs;
        agg.other += st.other;
        agg.pings += st.pings;
        dropped += st.dropped as u64;
        last = latest(last, st.last_at);
    }
    close_all(writers).await;
    let received = agg.received.saturating_sub(stray);
    let active = last
        .map(|l| (l - start).as_secs_f64())
        .unwrap_or(a.duration)
        .max(1e-3);
    let lost = expected.saturating_sub(received);
    let mut m = ctx.base("muc");
    m.insert("room".into(), json!(room));
    m.insert("room_created".into(), json!(created));
    m.insert("occupants".into(), json!(n));
    m.insert("senders".into(), json!(senders));
    m.insert("window".into(), json!(a.window));
    m.insert(
        "rate_offered".into(),
        if a.rate > 0.0 {
            json!(a.rate)
        } else {
            json!("unlimited")
        },
    );
    m.insert("duration_s".into(), json!(a.duration));
    m.insert("body_extra_bytes".into(), json!(a.body_bytes));
    m.insert("login_phase_s".into(), json!(login_s));
    m.insert("join_phase_s".into(), json!(join_s));
    m.insert("sent".into(), json!(sent));
    m.insert("expected_deliveries".into(), json!(expected));
    m.insert("delivered".into(), json!(received));
    m.insert("lost".into(), json!(lost));
    m.insert("excess".into(), json!(received.saturating_sub(expected)));
    m.insert("before_start".into(), json!(stray));
    m.insert("reordered".into(), json!(agg.reordered));
    m.insert("error_messages".into(), json!(agg.error_msgs));
    m.insert("other_stanzas".into(), json!(agg.other));
    m.insert("pings_answered".into(), json!(agg.pings));
    m.insert("sessions_dropped".into(), json!(dropped));
    m.insert("send_errors".into(), send_errors.json());
    m.insert("window_stalls".into(), json!(stalls));
    m.insert("sent_per_s".into(), json!(sent as f64 / active));
    m.insert("deliveries_per_s".into(), json!(received as f64 / active));
    m.insert("latency".into(), agg.lat.summary());
    m.insert("cpu".into(), cpu_json(&s0, &s1, received));
    eprintln!(
        "[{}] muc: {n} occupants, {senders} senders: {sent} sent, {received}/{expected} delivered = {:.0}/s, p50 {} p99 {} µs, server CPU {:.1} µs/delivery, lost {lost} reordered {} errors {}",
        ctx.cli.label,
        received as f64 / active,
        m["latency"]["p50_us"],
        m["latency"]["p99_us"],
        m["cpu"]["server_cpu_us_per_op"]
            .as_f64()
            .unwrap_or(f64::NAN),
        agg.reordered,
        agg.error_msgs + send_errors.n()
    );
    Ok(ctx.finish(m))
}
