//! `resume`: N sessions with XEP-0198 stream management (resumption on). In a
//! loop, each receives a message from its partner session (which stays
//! connected), drops its TCP connection before acknowledging it (reset, no
//! `</stream:stream>`), reconnects (TCP, TLS, SCRAM), resumes with the `h` of
//! what it had handled, and checks that the message is delivered again.
//! Users: session i is pool user 2i (resource `sm`), its partner user 2i+1.

use crate::procfs::{Snap, cpu_json};
use crate::stats::Samples;
use crate::xmpp::{self, Conn, Tls};
use crate::{Ctx, Errors, parse_u64, ping_reply, pool};
use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

const NS_SM: &str = "urn:xmpp:sm:3";

pub struct ResumeArgs {
    pub sessions: u64,
    pub duration: f64,
    pub login_conc: usize,
    pub wait: f64,
}

fn is_stanza(name: &[u8]) -> bool {
    matches!(name, b"message" | b"presence" | b"iq")
}

/// The stream-managed session of one worker.
struct Sm {
    c: Conn<Tls>,
    id: String,
    /// Stanzas received and handled since `<enable/>` (what we would ack).
    h: u32,
}

impl Sm {
    /// Read until a message with body `SEQ ...` arrives. Stanzas before it are
    /// handled (counted, pings answered); `<r/>` is answered with our `h`.
    /// The message itself is not counted: the caller decides.
    async fn until_message(&mut self, seq: u64, deadline: Instant) -> Result<()> {
        loop {
            let (name, s) = self.c.next_element(deadline).await?;
            if is_stanza(&name) {
                if name == b"message"
                    && let Some(body) = xmpp::element_text(&s, b"<body", b"</body>")
                    && body.split(|b| *b == b' ').next().and_then(parse_u64) == Some(seq)
                {
                    return Ok(());
                }
                self.h = self.h.wrapping_add(1);
                if name == b"iq"
                    && let Some(r) = ping_reply(&s)
                {
                    self.c.send(&r).await?;
                }
            } else if name == b"r" {
                let a = format!("<a xmlns='{NS_SM}' h='{}'/>", self.h);
                self.c.send(a.as_bytes()).await?;
            } else if name == b"failed" {
                bail!("stream management failed: {}", String::from_utf8_lossy(&s));
            }
        }
    }
}

/// `<enable resume='true'/>` on a bound session; Ok(id) once `<enabled/>` grants resumption.
async fn enable(c: &mut Conn<Tls>, timeout: Duration) -> Result<String> {
    let deadline = Instant::now() + timeout;
    c.send(format!("<enable xmlns='{NS_SM}' resume='true'/>").as_bytes())
        .await?;
    loop {
        let (name, s) = c.next_element(deadline).await?;
        match name.as_slice() {
            b"enabled" => {
                let resume = xmpp::attr(&s, b"resume");
                if !matches!(resume, Some(b"true") | Some(b"1")) {
                    bail!("resumption not granted: {}", String::from_utf8_lossy(&s));
                }
                let id = xmpp::attr(&s, b"id").context("<enabled/> without id")?;
                return Ok(String::from_utf8_lossy(id).into_owned());
            }
            b"failed" => bail!("<enable/> refused: {}", String::from_utf8_lossy(&s)),
            _ => {}
        }
    }
}

#[derive(Default)]
struct WorkerStats {
    lat: Samples,
    resumed: u64,
    failed: u64,
    first_missing: u64,
    redelivery_missing: u64,
    sent: u64,
}

#[allow(clippy::too_many_arguments)]
async fn worker(
    ctx: Arc<Ctx>,
    i: u64,
    sm: Sm,
    mut partner: Conn<Tls>,
    deadline: Instant,
    wait: Duration,
    errors: Arc<Errors>,
    done: Arc<AtomicU64>,
    finished: Arc<Semaphore>,
) -> WorkerStats {
    let mut st = WorkerStats::default();
    let (user, pass) = ctx.user(2 * i);
    let to = format!("{user}@{}/sm", ctx.cli.domain);
    let mut seq = 0u64;
    let mut cur = Some(sm);
    while Instant::now() < deadline {
        let Some(mut sm) = cur.take() else { break };
        seq += 1;
        let ts = crate::now_us();
        let msg =
            format!("<message to='{to}' type='chat' id='r{seq}'><body>{seq} {ts}</body></message>");
        if let Err(e) = partner.send(msg.as_bytes()).await {
            errors.add(&e.context("partner send"));
            cur = Some(sm);
            break;
        }
        st.sent += 1;
        if let Err(e) = sm.until_message(seq, Instant::now() + wait).await {
            st.first_missing += 1;
            errors.add(&e.context("first delivery"));
            cur = Some(sm);
            break;
        }
        // the message arrived but is not acknowledged: drop the connection now
        let Sm { c, id, h } = sm;
        xmpp::abort(c);
        let t0 = Instant::now();
        let r = tokio::time::timeout(ctx.target.login_timeout, async {
            let (mut c, features) =
                xmpp::authenticate(&ctx.target, &user, &pass, None, &ctx.cache).await?;
            if memchr::memmem::find(&features, NS_SM.as_bytes()).is_none() {
                bail!("no stream management offered after authentication");
            }
            c.send(format!("<resume xmlns='{NS_SM}' h='{h}' previd='{id}'/>").as_bytes())
                .await?;
            let dl = Instant::now() + wait;
            loop {
                let (name, s) = c.next_element(dl).await?;
                match name.as_slice() {
                    b"resumed" => return Ok(Ok(c)),
                    b"failed" => return Ok(Err((c, String::from_utf8_lossy(&s).into_owned()))),
                    _ => {}
                }
            }
        })
        .await;
        let c = match r {
            Ok(Ok(Ok(c))) => {
                st.lat.push_us(t0.elapsed().as_micros() as u64);
                st.resumed += 1;
                done.fetch_add(1, Ordering::Relaxed);
                c
            }
            Ok(Ok(Err((mut c, why)))) => {
                // not resumable: count it, start a fresh session and go on
                st.failed += 1;
                st.redelivery_missing += 1;
                errors.add(&anyhow::anyhow!("resumption failed: {why}"));
                let fresh = async {
                    xmpp::bind(&mut c, "sm").await?;
                    c.send(b"<presence/>").await?;
                    enable(&mut c, wait).await
                }
                .await;
                match fresh {
                    Ok(id) => {
                        cur = Some(Sm { c, id, h: 0 });
                        continue;
                    }
                    Err(e) => {
                        errors.add(&e);
                        xmpp::abort(c);
                        break;
                    }
                }
            }
            Ok(Err(e)) => {
                st.redelivery_missing += 1;
                errors.add(&e);
                break;
            }
            Err(_) => {
                st.redelivery_missing += 1;
                errors.add(&anyhow::anyhow!("resumption timed out"));
                break;
            }
        };
        let mut sm = Sm { c, id, h };
        // the unacknowledged message comes again
        match sm.until_message(seq, Instant::now() + wait).await {
            Ok(()) => {
                sm.h = sm.h.wrapping_add(1);
                let a = format!("<a xmlns='{NS_SM}' h='{}'/>", sm.h);
                if let Err(e) = sm.c.send(a.as_bytes()).await {
                    errors.add(&e);
                    break;
                }
                cur = Some(sm);
            }
            Err(e) => {
                st.redelivery_missing += 1;
                errors.add(&e.context("redelivery after resumption"));
                cur = Some(sm);
                break;
            }
        }
    }
    finished.add_permits(1);
    // a polite close ends the session (no hibernation), outside the measured phase
    if let Some(sm) = cur {
        xmpp::close(sm.c).await;
    }
    xmpp::close(partner).await;
    st
}

pub async fn scen_resume(ctx: Arc<Ctx>, a: ResumeArgs) -> Result<Value> {
    let n = a.sessions.max(1);
    let wait = Duration::from_secs_f64(a.wait.max(0.1));
    let t_login = Instant::now();
    let c2 = ctx.clone();
    let setups = pool(n, a.login_conc, move |i| {
        let ctx = c2.clone();
        async move {
            let mut c = ctx.login(2 * i, "sm", None).await?;
            let id = enable(&mut c, ctx.target.login_timeout).await?;
            let p = ctx.login(2 * i + 1, "partner", None).await?;
            Ok((Sm { c, id, h: 0 }, p))
        }
    })
    .await;
    let login_errors = Errors::default();
    let setups: Vec<(Sm, Conn<Tls>)> = setups
        .into_iter()
        .filter_map(|r| r.map_err(|e| login_errors.add(&e)).ok())
        .collect();
    if login_errors.n() > 0 {
        bail!(
            "{} of {n} session setups failed, e.g. {:?}",
            login_errors.n(),
            login_errors.first.lock().unwrap()
        );
    }
    let login_s = t_login.elapsed().as_secs_f64();
    let errors = Arc::new(Errors::default());
    let done = Arc::new(AtomicU64::new(0));
    let s0 = Snap::take(ctx.cli.server_pid);
    let deadline = s0.at + Duration::from_secs_f64(a.duration);
    let finished = Arc::new(Semaphore::new(0));
    let mut set = tokio::task::JoinSet::new();
    for (i, (sm, p)) in setups.into_iter().enumerate() {
        set.spawn(worker(
            ctx.clone(),
            i as u64,
            sm,
            p,
            deadline,
            wait,
            errors.clone(),
            done.clone(),
            finished.clone(),
        ));
    }
    // the measured phase ends when the last worker finishes its last cycle
    // (before the polite closes)
    let limit = Duration::from_secs_f64(a.duration) + ctx.target.login_timeout + 3 * wait;
    let _ = tokio::time::timeout(limit, finished.acquire_many(n as u32)).await;
    let s1 = Snap::take(ctx.cli.server_pid);
    let mut agg = WorkerStats::default();
    while let Some(r) = set.join_next().await {
        let st = r?;
        agg.lat.merge(st.lat);
        agg.resumed += st.resumed;
        agg.failed += st.failed;
        agg.first_missing += st.first_missing;
        agg.redelivery_missing += st.redelivery_missing;
        agg.sent += st.sent;
    }
    let resumed = agg.resumed;
    let wall = (s1.at - s0.at).as_secs_f64();
    let lost = agg.first_missing + agg.redelivery_missing;
    let mut m = ctx.base("resume");
    m.insert("sessions".into(), json!(n));
    m.insert("duration_s".into(), json!(a.duration));
    m.insert("login_phase_s".into(), json!(login_s));
    m.insert("messages_sent".into(), json!(agg.sent));
    m.insert("resumptions".into(), json!(resumed));
    m.insert("resume_failed".into(), json!(agg.failed));
    m.insert("first_delivery_missing".into(), json!(agg.first_missing));
    m.insert("redelivery_missing".into(), json!(agg.redelivery_missing));
    m.insert("lost".into(), json!(lost));
    m.insert("errors".into(), errors.json());
    m.insert("resumptions_per_s".into(), json!(resumed as f64 / wall));
    m.insert("resume_latency".into(), agg.lat.summary());
    m.insert("cpu".into(), cpu_json(&s0, &s1, resumed));
    eprintln!(
        "[{}] resume: {n} sessions: {resumed} resumptions in {wall:.1}s = {:.0}/s, p50 {} p99 {} µs, server CPU {:.0} µs/resumption, failed {}, lost {lost}, errors {}",
        ctx.cli.label,
        resumed as f64 / wall,
        m["resume_latency"]["p50_us"],
        m["resume_latency"]["p99_us"],
        m["cpu"]["server_cpu_us_per_op"]
            .as_f64()
            .unwrap_or(f64::NAN),
        agg.failed,
        errors.n()
    );
    Ok(ctx.finish(m))
}
