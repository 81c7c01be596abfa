//! `offline`: K messages to a user who is offline, then that user logs in
//! (initial presence) and the time until all K have arrived is measured.
//! Users: sender = pool user 0, recipient = pool user 1 (see --users-offset).

use crate::procfs::{Snap, cpu_json_multi};
use crate::xmpp::{self, Conn, Stanza, Tls};
use crate::{Ctx, Errors, parse_u64, ping_reply};
use anyhow::{Result, anyhow, bail};
use serde_json::{Value, json};
use std::io::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

pub struct OfflineArgs {
    pub messages: u64,
    pub rounds: u32,
    pub timeout: f64,
    pub body_bytes: usize,
}

fn is_error(s: &[u8]) -> bool {
    xmpp::attr(s, b"type") == Some(b"error".as_slice())
}

/// Log the recipient in once and take whatever the server still holds for it
/// (left over from an earlier, interrupted run) until it has been quiet for a
/// second. Returns how many messages it took.
async fn pre_drain(ctx: &Ctx, rcpt: u64, limit: Duration) -> Result<u64> {
    let mut c = ctx.login(rcpt, "drain", None).await?;
    let deadline = Instant::now() + limit;
    let mut n = 0;
    loop {
        while let Some(s) = c.next_stanza() {
            match s {
                Stanza::Close => bail!("stream closed while draining"),
                Stanza::Element { name, all } => {
                    let s = &c.buf[all.0..all.1];
                    match &c.buf[name.0..name.1] {
                        b"message" => n += 1,
                        b"iq" => {
                            if let Some(r) = ping_reply(s) {
                                c.send(&r).await?;
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
        let quiet = (Instant::now() + Duration::from_secs(1)).min(deadline);
        match tokio::time::timeout_at(quiet.into(), c.fill()).await {
            Ok(r) => r?,
            Err(_) => break,
        }
    }
    xmpp::close(c).await;
    Ok(n)
}

struct Round {
    stored_s: f64,
    sender_errors: u64,
    drain_ms: Option<f64>,
    first_ms: Option<f64>,
    received: u64,
    duplicates: u64,
    reordered: u64,
    stale: u64,
    /// The server closed the recipient's stream during the drain.
    dropped: bool,
    store: (Snap, Snap),
    drain: (Snap, Snap),
}

/// Sender: K messages to the bare JID of the recipient, then a ping to the
/// server whose answer means every message before it was handled.
async fn send_all(
    ctx: &Ctx,
    rcpt_jid: &str,
    run: u64,
    a: &OfflineArgs,
) -> Result<(f64, u64, (Snap, Snap))> {
    let c = ctx.login(0, "send", None).await?;
    let (io, rest) = c.into_parts();
    let (r, mut w) = tokio::io::split(io);
    let mut rc = Conn::new(r);
    rc.buf.extend_from_slice(&rest);
    let timeout = Duration::from_secs_f64(a.timeout);
    // the reader counts bounces (storage full, ...) and waits for the ping's answer
    let reader = tokio::spawn(async move {
        let mut errors = 0u64;
        let deadline = Instant::now() + timeout;
        loop {
            let (name, s) = rc.next_element(deadline).await?;
            if name == b"message" && is_error(&s) {
                errors += 1;
            } else if name == b"iq" && xmpp::attr(&s, b"id") == Some(b"offline-done".as_slice()) {
                if is_error(&s) {
                    bail!("ping refused: {}", String::from_utf8_lossy(&s));
                }
                return Ok::<_, anyhow::Error>((errors, Instant::now(), rc));
            }
        }
    });
    let pad = if a.body_bytes > 0 {
        format!(" {}", "x".repeat(a.body_bytes))
    } else {
        String::new()
    };
    let s0 = Snap::take(ctx.cli.server_pid);
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut seq = 0u64;
    while seq < a.messages {
        buf.clear();
        for _ in 0..200.min(a.messages - seq) {
            seq += 1;
            let _ = write!(
                buf,
                "<message to='{rcpt_jid}' type='chat' id='o{seq}'><body>{run} {seq}{pad}</body></message>"
            );
        }
        w.write_all(&buf).await?;
    }
    w.write_all(
        format!(
            "<iq type='get' id='offline-done' to='{}'><ping xmlns='urn:xmpp:ping'/></iq>",
            ctx.cli.domain
        )
        .as_bytes(),
    )
    .await?;
    w.flush().await?;
    let (errors, done_at, rc) = reader.await??;
    let s1 = Snap::take(ctx.cli.server_pid);
    let stored_s = (done_at - s0.at).as_secs_f64();
    let mut io = rc.io.unsplit(w);
    let _ = io.write_all(b"</stream:stream>").await;
    let _ = tokio::time::timeout(Duration::from_secs(3), io.shutdown()).await;
    Ok((stored_s, errors, (s0, s1)))
}

async fn round(ctx: &Ctx, a: &OfflineArgs) -> Result<Round> {
    let (rcpt_user, _) = ctx.user(1);
    let rcpt_jid = format!("{rcpt_user}@{}", ctx.cli.domain);
    let run = crate::now_us() + 1;
    let (stored_s, sender_errors, store) = send_all(ctx, &rcpt_jid, run, a).await?;
    // the sender's logout must not overlap the measured drain
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut c: Conn<Tls> =
        xmpp::login_bound(&ctx.target, &rcpt_user, &ctx.user(1).1, "rcpt", &ctx.cache).await?;
    let k = a.messages as usize;
    let mut seen = vec![false; k + 1];
    let (mut received, mut duplicates, mut reordered, mut stale) = (0u64, 0u64, 0u64, 0u64);
    let mut max_seq = 0u64;
    let mut first: Option<Instant> = None;
    let mut last: Option<Instant> = None;
    let mut dropped = false;
    let d0 = Snap::take(ctx.cli.server_pid);
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs_f64(a.timeout);
    c.send(b"<presence/>").await?;
    'outer: while received < a.messages {
        while let Some(s) = c.next_stanza() {
            let (name, all) = match s {
                Stanza::Close => {
                    dropped = true;
                    break 'outer;
                }
                Stanza::Element { name, all } => (name, all),
            };
            let s = &c.buf[all.0..all.1];
            match &c.buf[name.0..name.1] {
                b"message" => {
                    let body = xmpp::element_text(s, b"<body", b"</body>").unwrap_or(&[]);
                    let mut it = body.split(|b| *b == b' ');
                    let r = it.next().and_then(parse_u64);
                    let q = it.next().and_then(parse_u64);
                    match (r, q) {
                        (Some(r), Some(q)) if r == run && q >= 1 && q <= a.messages => {
                            let now = Instant::now();
                            first.get_or_insert(now);
                            if seen[q as usize] {
                                duplicates += 1;
                            } else {
                                seen[q as usize] = true;
                                received += 1;
                                last = Some(now);
                            }
                            if q < max_seq {
                                reordered += 1;
                            }
                            max_seq = max_seq.max(q);
                            if received == a.messages {
                                break 'outer;
                            }
                        }
                        _ => stale += 1,
                    }
                }
                b"iq" => {
                    if let Some(r) = ping_reply(s) {
                        c.send(&r).await?;
                    }
                }
                _ => {}
            }
        }
        match tokio::time::timeout_at(deadline.into(), c.fill()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => {
                dropped = true;
                break;
            }
            Err(_) => break,
        }
    }
    let d1 = Snap::take(ctx.cli.server_pid);
    if dropped {
        xmpp::abort(c);
    } else {
        xmpp::close(c).await;
    }
    let ms = |t: Option<Instant>| t.map(|t| (t - t0).as_secs_f64() * 1e3);
    Ok(Round {
        stored_s,
        sender_errors,
        drain_ms: if received == a.messages {
            ms(last)
        } else {
            None
        },
        first_ms: ms(first),
        received,
        duplicates,
        reordered,
        stale,
        dropped,
        store,
        drain: (d0, d1),
    })
}

fn median(v: &mut [f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    Some(v[v.len() / 2])
}

pub async fn scen_offline(ctx: Arc<Ctx>, a: OfflineArgs) -> Result<Value> {
    let rounds = a.rounds.max(1);
    let pre = pre_drain(&ctx, 1, Duration::from_secs_f64(a.timeout)).await?;
    let errors = Errors::default();
    let mut done: Vec<Round> = Vec::new();
    for _ in 0..rounds {
        match round(&ctx, &a).await {
            Ok(r) => {
                if r.received < a.messages {
                    let _ = pre_drain(&ctx, 1, Duration::from_secs_f64(a.timeout)).await;
                }
                done.push(r)
            }
            Err(e) => {
                errors.add(&e);
                // whatever is left for the recipient would spoil the next round
                let _ = pre_drain(&ctx, 1, Duration::from_secs_f64(a.timeout)).await;
            }
        }
    }
    if done.is_empty() {
        return Err(anyhow!(
            "every round failed, e.g. {:?}",
            errors.first.lock().unwrap()
        ));
    }
    let total: u64 = a.messages * done.len() as u64;
    let received: u64 = done.iter().map(|r| r.received).sum();
    let lost = total.saturating_sub(received);
    let mut drains: Vec<f64> = done.iter().filter_map(|r| r.drain_ms).collect();
    let drain_ms = median(&mut drains);
    let mut firsts: Vec<f64> = done.iter().filter_map(|r| r.first_ms).collect();
    let first_ms = median(&mut firsts);
    let mut stores: Vec<f64> = done.iter().map(|r| r.stored_s).collect();
    let store_s = median(&mut stores);
    let stores_spans: Vec<_> = done.iter().map(|r| r.store).collect();
    let drain_spans: Vec<_> = done.iter().map(|r| r.drain).collect();
    let per_round: Vec<Value> = done
        .iter()
        .map(|r| {
            json!({
                "store_s": r.stored_s,
                "drain_ms": r.drain_ms,
                "first_message_ms": r.first_ms,
                "received": r.received,
                "duplicates": r.duplicates,
                "reordered": r.reordered,
                "stale": r.stale,
                "recipient_dropped": r.dropped,
                "sender_errors": r.sender_errors,
                "drain_server_cpu_s": match (r.drain.0.server_cpu, r.drain.1.server_cpu) {
                    (Some(x), Some(y)) => Some(y - x),
                    _ => None,
                },
            })
        })
        .collect();
    let mut m = ctx.base("offline");
    m.insert("messages".into(), json!(a.messages));
    m.insert("rounds".into(), json!(rounds));
    m.insert("rounds_ok".into(), json!(done.len()));
    m.insert("body_extra_bytes".into(), json!(a.body_bytes));
    m.insert("left_over_before_start".into(), json!(pre));
    m.insert("errors".into(), errors.json());
    m.insert("store_s".into(), json!(store_s));
    m.insert(
        "store_per_s".into(),
        json!(store_s.map(|s| a.messages as f64 / s)),
    );
    m.insert("store_cpu".into(), cpu_json_multi(&stores_spans, total));
    m.insert("drain_ms".into(), json!(drain_ms));
    m.insert("first_message_ms".into(), json!(first_ms));
    m.insert(
        "drain_per_s".into(),
        json!(drain_ms.map(|d| a.messages as f64 / (d / 1e3))),
    );
    m.insert("drain_cpu".into(), cpu_json_multi(&drain_spans, received));
    m.insert("received".into(), json!(received));
    m.insert("lost".into(), json!(lost));
    m.insert(
        "duplicates".into(),
        json!(done.iter().map(|r| r.duplicates).sum::<u64>()),
    );
    m.insert(
        "reordered".into(),
        json!(done.iter().map(|r| r.reordered).sum::<u64>()),
    );
    m.insert(
        "stale_messages".into(),
        json!(done.iter().map(|r| r.stale).sum::<u64>()),
    );
    m.insert(
        "error_messages".into(),
        json!(done.iter().map(|r| r.sender_errors).sum::<u64>()),
    );
    m.insert(
        "recipient_dropped".into(),
        json!(done.iter().filter(|r| r.dropped).count()),
    );
    m.insert("per_round".into(), json!(per_round));
    eprintln!(
        "[{}] offline: {} msgs x {} rounds: stored in {:.0} ms (median), drained in {:.0} ms (median) = {:.0}/s, server CPU {:.1} µs/msg drained, {:.1} µs/msg stored, lost {lost}, bounced {}, errors {}",
        ctx.cli.label,
        a.messages,
        done.len(),
        store_s.unwrap_or(f64::NAN) * 1e3,
        drain_ms.unwrap_or(f64::NAN),
        drain_ms
            .map(|d| a.messages as f64 / (d / 1e3))
            .unwrap_or(f64::NAN),
        m["drain_cpu"]["server_cpu_us_per_op"]
            .as_f64()
            .unwrap_or(f64::NAN),
        m["store_cpu"]["server_cpu_us_per_op"]
            .as_f64()
            .unwrap_or(f64::NAN),
        m["error_messages"],
        errors.n()
    );
    Ok(ctx.finish(m))
}
