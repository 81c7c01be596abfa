//! XEP-0313 Message Archive Management for user archives, with XEP-0359
//! stanza ids and XEP-0059 paging. Both sides of a one-to-one conversation
//! are archived (the sender's copy and the recipient's), before delivery, so
//! a device that comes back asks for everything after the last id it saw.

use super::{IqRequest, Module, Target};
use crate::router::to_bytes;
use crate::server::Server;
use crate::stanza::{error_reply, iq_result};
use crate::storage::{ArchivePrefs, ArchiveQuery, NewArchived};
use crate::util::Bare;
use crate::util::{now_micros, parse_datetime, xmpp_datetime_micros};
use crate::xml::{BuilderExt, el, ns};
use async_trait::async_trait;
use bytes::Bytes;
use jid::{BareJid, FullJid, Jid};
use minidom::Element;
use std::sync::Arc;

pub const NS: &str = "urn:xmpp:mam:2";
pub const NS_EXTENDED: &str = "urn:xmpp:mam:2#extended";
pub const SID: &str = "urn:xmpp:sid:0";
const RSM: &str = "http://jabber.org/protocol/rsm";
const FORWARD: &str = "urn:xmpp:forward:0";
const HINTS: &str = "urn:xmpp:hints";
const DEFAULT_PAGE: usize = 50;
const MAX_PAGE: usize = 250;

pub struct Mam;

/// Messages worth keeping: chat/normal with a body, a receipt or a chat
/// marker (so a new device can rebuild delivered/read state), or a store hint.
pub fn archivable(msg: &Element) -> bool {
    if !matches!(msg.attr("type"), None | Some("normal") | Some("chat")) {
        return false;
    }
    if msg.has_child("no-store", HINTS) || msg.has_child("no-permanent-store", HINTS) {
        return false;
    }
    msg.has_child("body", ns::CLIENT)
        || msg.has_child("store", HINTS)
        || msg
            .children()
            .any(|c| c.has_ns("urn:xmpp:receipts") || c.has_ns("urn:xmpp:chat-markers:0"))
}

/// Groupchat messages kept in a room archive: with a body, or a store hint.
pub fn archivable_groupchat(msg: &Element) -> bool {
    !msg.has_child("no-store", HINTS)
        && !msg.has_child("no-permanent-store", HINTS)
        && (msg.has_child("body", ns::CLIENT) || msg.has_child("store", HINTS))
}

/// Archiving preferences by account. They change only through the prefs IQ
/// (which updates this cache), so the message path need not query them.
#[derive(Default)]
pub struct PrefsCache {
    map: std::sync::Mutex<std::collections::HashMap<String, Option<Arc<ArchivePrefs>>>>,
}

const PREFS_CACHE_MAX: usize = 100_000;

impl PrefsCache {
    async fn get(&self, server: &Server, owner: &BareJid) -> Option<Arc<ArchivePrefs>> {
        if let Some(p) = self.map.lock().unwrap().get(owner.as_str()) {
            return p.clone();
        }
        // A storage error is not cached (and means the default, "always").
        let loaded = server
            .storage
            .archive
            .archive_prefs(owner.as_str())
            .await
            .ok()?;
        let prefs = loaded.map(Arc::new);
        self.put(owner, prefs.clone());
        prefs
    }

    pub fn put(&self, owner: &BareJid, prefs: Option<Arc<ArchivePrefs>>) {
        let mut m = self.map.lock().unwrap();
        if m.len() >= PREFS_CACHE_MAX {
            m.clear();
        }
        m.insert(owner.to_string(), prefs);
    }
}

async fn wants(server: &Server, owner: &BareJid, with: &BareJid) -> bool {
    let prefs = server.mam_prefs.get(server, owner).await;
    let Some(p) = prefs else { return true };
    if p.never.iter().any(|j| j == with.as_str()) {
        return false;
    }
    if p.always.iter().any(|j| j == with.as_str()) {
        return true;
    }
    match p.default_mode.as_str() {
        "never" => false,
        "roster" => server
            .storage
            .roster
            .roster_item(owner.as_str(), with.as_str())
            .await
            .ok()
            .flatten()
            .is_some_and(|i| i.in_roster),
        _ => true,
    }
}

/// A XEP-0359 stanza id: the time in milliseconds (12 hex digits, so ids
/// sort by time) then 72 random bits. Ordered ids land at the end of the
/// `(stanza_id, owner)` index, so a commit of many messages writes a few
/// pages of it, not one per message or per account.
fn new_stanza_id() -> String {
    use base64::Engine;
    let ms = (now_micros() / 1000) as u64 & 0xffff_ffff_ffff;
    let random = crate::random::bytes(9);
    format!(
        "{ms:012x}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random)
    )
}

/// Archive a message before it is routed, for each side that is a local
/// account (the sender is remote for stanzas that came over s2s); stamps the
/// recipient's `<stanza-id/>` on it when the recipient is a local account.
/// Returns `false` when storing failed (the message must not be acknowledged).
pub async fn archive_message(
    server: &Server,
    sender: &BareJid,
    to: &Jid,
    msg: &mut Element,
) -> bool {
    let (rows, _) = archive_rows(server, sender, to, msg).await;
    store_rows(server, rows).await
}

/// The archive rows for one message (none when it is not kept), stamping the
/// recipient's `<stanza-id/>` on it; [`store_rows`] stores them. Several
/// messages' rows stored together share one commit. Also returns the
/// message serialized as stored, when it was, to be sent as it is.
pub async fn archive_rows(
    server: &Server,
    sender: &BareJid,
    to: &Jid,
    msg: &mut Element,
) -> (Vec<NewArchived>, Option<Bytes>) {
    let to_bare = to.bare();
    // Nobody may forge our stanza ids (XEP-0359 §5).
    strip_stanza_ids(msg, to_bare.as_str());
    if !server.modules.enabled("mam") || !archivable(msg) {
        return (Vec::new(), None);
    }
    let now = now_micros();
    let mut rows = Vec::with_capacity(2);
    let recipient_local =
        server.config.serves(to_bare.domain().as_str()) && to_bare.node().is_some();
    let recipient_keeps = recipient_local
        && &to_bare != sender
        && (!server.registry.sessions(&to_bare).is_empty()
            || server
                .storage
                .accounts
                .account_exists(to_bare.as_str())
                .await
                .unwrap_or(false))
        && wants(server, &to_bare, sender).await;
    let recipient_sid = new_stanza_id();
    if recipient_keeps {
        msg.append_child(
            el("stanza-id", SID)
                .a("id", recipient_sid.as_str())
                .a("by", to_bare.as_str())
                .build(),
        );
    }
    let wire = to_bytes(msg);
    let xml = String::from_utf8(wire.to_vec()).unwrap_or_default();
    let sender_local = server.config.serves(sender.domain().as_str()) && sender.node().is_some();
    if sender_local && wants(server, sender, &to_bare).await {
        rows.push(NewArchived {
            owner: sender.to_string(),
            stanza_id: new_stanza_id(),
            with: to_bare.to_string(),
            stanza: xml.clone(),
            created_at: now,
        });
    }
    if recipient_keeps {
        rows.push(NewArchived {
            owner: to_bare.to_string(),
            stanza_id: recipient_sid,
            with: sender.to_string(),
            stanza: xml,
            created_at: now,
        });
    }
    (rows, Some(wire))
}

/// Store archive rows through the group-committing writer; `false` when
/// storing failed.
pub async fn store_rows(server: &Server, rows: Vec<NewArchived>) -> bool {
    if rows.is_empty() {
        return true;
    }
    let started = std::time::Instant::now();
    let stored = server.archive_writer.append(rows).await;
    server.metrics.storage_write(started);
    match stored {
        Ok(()) => true,
        Err(e) => {
            tracing::error!(error = %e, "archiving failed");
            false
        }
    }
}

fn strip_stanza_ids(msg: &mut Element, by: &str) {
    let forged = |e: &Element| e.is("stanza-id", SID) && e.attr("by") == Some(by);
    if !msg.children().any(forged) {
        return; // the usual case: nothing to rebuild
    }
    let keep: Vec<minidom::Node> = msg
        .take_nodes()
        .into_iter()
        .filter(|n| !matches!(n, minidom::Node::Element(e) if forged(e)))
        .collect();
    for n in keep {
        msg.append_node(n);
    }
}

fn form_fields(x: &Element) -> Vec<(String, Vec<String>)> {
    x.children()
        .filter(|f| f.is("field", ns::DATA_FORMS))
        .map(|f| {
            let var = f.attr("var").unwrap_or_default().to_string();
            let values = f
                .children()
                .filter(|v| v.is("value", ns::DATA_FORMS))
                .map(|v| v.text())
                .collect();
            (var, values)
        })
        .collect()
}

fn query_form() -> Element {
    let field = |var: &str, kind: &str| {
        el("field", ns::DATA_FORMS)
            .a("var", var)
            .a("type", kind)
            .build()
    };
    el("query", NS)
        .c(el("x", ns::DATA_FORMS)
            .a("type", "form")
            .c(el("field", ns::DATA_FORMS)
                .a("var", "FORM_TYPE")
                .a("type", "hidden")
                .c(el("value", ns::DATA_FORMS).t(NS).build())
                .build())
            .c(field("with", "jid-single"))
            .c(field("start", "text-single"))
            .c(field("end", "text-single"))
            .c(field("before-id", "text-single"))
            .c(field("after-id", "text-single"))
            .c(field("ids", "text-multi"))
            .build())
        .build()
}

/// Run an archive query on `owner`'s archive (an account or a room) and send
/// the results to the requesting session; returns the IQ answer.
pub async fn run_query(
    server: &Server,
    iq: &Element,
    q: &Element,
    from: &FullJid,
    owner: &BareJid,
) -> Element {
    match query(server, iq, q, from, owner).await {
        Some(r) => r,
        None => error_reply(iq, "bad-request", None).expect("iq request"),
    }
}

async fn query(
    server: &Server,
    iq: &Element,
    q: &Element,
    from: &FullJid,
    owner: &BareJid,
) -> Option<Element> {
    let bad = |text: &str| error_reply(iq, "bad-request", Some(text));
    let mut query = ArchiveQuery {
        max: DEFAULT_PAGE,
        ..Default::default()
    };
    let lookup = |sid: String| async move {
        server
            .storage
            .archive
            .archive_row_id(owner.as_str(), &sid)
            .await
            .ok()
            .flatten()
    };
    if let Some(x) = q.get_child("x", ns::DATA_FORMS) {
        for (var, values) in form_fields(x) {
            let one = values.first().cloned().unwrap_or_default();
            match var.as_str() {
                "FORM_TYPE" => {
                    if one != NS {
                        return bad("unknown FORM_TYPE");
                    }
                }
                "with" => match Jid::new(&one) {
                    Ok(j) => query.with = Some(j.bare().to_string()),
                    Err(_) => return error_reply(iq, "jid-malformed", None),
                },
                "start" => query.start = Some(parse_datetime(&one)?),
                "end" => query.end = Some(parse_datetime(&one)?),
                "after-id" => match lookup(one).await {
                    Some(id) => query.after = Some(id),
                    None => return error_reply(iq, "item-not-found", None),
                },
                "before-id" => match lookup(one).await {
                    Some(id) => query.before = Some(id),
                    None => return error_reply(iq, "item-not-found", None),
                },
                "ids" => query.ids = Some(values),
                _ => return bad(&format!("unsupported field {var}")),
            }
        }
    }
    if let Some(set) = q.get_child("set", RSM) {
        if let Some(m) = set.get_child("max", RSM) {
            query.max = m
                .text()
                .trim()
                .parse::<usize>()
                .map_err(|_| ())
                .ok()?
                .min(MAX_PAGE);
        }
        if let Some(a) = set.get_child("after", RSM) {
            match lookup(a.text()).await {
                Some(id) => query.after = Some(query.after.map_or(id, |x| x.max(id))),
                None => return error_reply(iq, "item-not-found", None),
            }
        }
        if let Some(b) = set.get_child("before", RSM) {
            query.from_end = true;
            let t = b.text();
            if !t.is_empty() {
                match lookup(t).await {
                    Some(id) => query.before = Some(query.before.map_or(id, |x| x.min(id))),
                    None => return error_reply(iq, "item-not-found", None),
                }
            }
        }
    }
    let page = match server
        .storage
        .archive
        .query_archive(owner.as_str(), &query)
        .await
    {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "archive query failed");
            return error_reply(iq, "internal-server-error", None);
        }
    };
    let session = server.registry.session(from)?;
    let queryid = q.attr("queryid");
    for item in &page.items {
        let Ok(original) = item.stanza.parse::<Element>() else {
            continue;
        };
        let mut result = el("result", NS).a("id", item.stanza_id.as_str());
        if let Some(qid) = queryid {
            result = result.a("queryid", qid);
        }
        let m = el("message", ns::CLIENT)
            .a("from", owner.as_str())
            .a("to", from.as_str())
            .c(result
                .c(el("forwarded", FORWARD)
                    .c(el("delay", ns::DELAY)
                        .a("stamp", xmpp_datetime_micros(item.created_at))
                        .build())
                    .c(original)
                    .build())
                .build())
            .build();
        session.send(to_bytes(&m));
    }
    let mut set = el("set", RSM);
    if let (Some(first), Some(last)) = (page.items.first(), page.items.last()) {
        set = set
            .c(el("first", RSM).t(&first.stanza_id).build())
            .c(el("last", RSM).t(&last.stanza_id).build());
    }
    set = set.c(el("count", RSM).t(&page.count.to_string()).build());
    let fin = el("fin", NS)
        .a("complete", if page.complete { "true" } else { "false" })
        .c(set.build())
        .build();
    Some(iq_result(iq, Some(fin)))
}

impl Mam {
    async fn prefs(
        &self,
        server: &Arc<Server>,
        req: &IqRequest<'_>,
        owner: &BareJid,
    ) -> Option<Element> {
        let iq = req.iq;
        let render = |p: &ArchivePrefs| {
            let list = |name: &str, jids: &[String]| {
                let mut b = el(name, NS);
                for j in jids {
                    b = b.c(el("jid", NS).t(j).build());
                }
                b.build()
            };
            el("prefs", NS)
                .a("default", p.default_mode.as_str())
                .c(list("always", &p.always))
                .c(list("never", &p.never))
                .build()
        };
        if iq.attr("type") == Some("get") {
            let p = server
                .storage
                .archive
                .archive_prefs(owner.as_str())
                .await
                .ok()
                .flatten()
                .unwrap_or(ArchivePrefs {
                    default_mode: "always".into(),
                    always: vec![],
                    never: vec![],
                });
            return Some(iq_result(iq, Some(render(&p))));
        }
        let q = req.payload;
        let mode = q.attr("default").unwrap_or("always");
        if !matches!(mode, "always" | "never" | "roster") {
            return error_reply(
                iq,
                "bad-request",
                Some("default must be always, never or roster"),
            );
        }
        let jids = |name: &str| -> Vec<String> {
            q.get_child(name, NS)
                .map(|l| {
                    l.children()
                        .filter_map(|j| BareJid::new(&j.text()).ok().map(|b| b.to_string()))
                        .collect()
                })
                .unwrap_or_default()
        };
        let p = ArchivePrefs {
            default_mode: mode.into(),
            always: jids("always"),
            never: jids("never"),
        };
        if let Err(e) = server
            .storage
            .archive
            .set_archive_prefs(owner.as_str(), &p)
            .await
        {
            tracing::error!(error = %e, "saving archive prefs failed");
            return error_reply(iq, "internal-server-error", None);
        }
        server.mam_prefs.put(owner, Some(Arc::new(p.clone())));
        Some(iq_result(iq, Some(render(&p))))
    }
}

#[async_trait]
impl Module for Mam {
    fn name(&self) -> &'static str {
        "mam"
    }
    fn namespaces(&self) -> &'static [&'static str] {
        &[NS]
    }
    fn features(&self, t: &Target) -> Vec<&'static str> {
        match t {
            Target::Account { .. } => vec![NS, NS_EXTENDED, SID],
            Target::Server(_) => vec![SID],
        }
    }
    async fn handle_iq(&self, server: &Arc<Server>, req: &IqRequest<'_>) -> Option<Element> {
        let owner = match req.target {
            Target::Account { jid, own: true } => jid.clone(),
            _ => return error_reply(req.iq, "forbidden", None),
        };
        match (req.payload.name(), req.iq.attr("type")) {
            ("query", Some("get")) => Some(iq_result(req.iq, Some(query_form()))),
            ("query", Some("set")) => {
                Some(run_query(server, req.iq, req.payload, req.from, &owner).await)
            }
            ("prefs", _) => self.prefs(server, req, &owner).await,
            _ => error_reply(req.iq, "bad-request", None),
        }
    }
}
