//! One room: occupants, roles and affiliations, history, subject,
//! configuration, and the admin/owner use cases of XEP-0045.

use super::{
    NS, NS_ADMIN, NS_OWNER, NS_ROOMCONFIG, NS_ROOMINFO, NS_USER, readdress, reply, send, user_x,
};
use crate::config::MucModuleConfig;
use crate::router::to_bytes;
use crate::server::Server;
use crate::stanza::{error_reply, iq_result};
use crate::storage::{NewArchived, StoredRoom};
use crate::util::Bare;
use crate::util::{now_micros, parse_datetime, xmpp_datetime_micros};
use crate::xml::{BuilderExt, ElementExt, el, ns};
use bytes::Bytes;
use jid::{BareJid, FullJid, Jid};
use minidom::Element;
use std::collections::{HashMap, VecDeque};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Affiliation {
    Outcast,
    None,
    Member,
    Admin,
    Owner,
}

impl Affiliation {
    fn as_str(self) -> &'static str {
        match self {
            Affiliation::Outcast => "outcast",
            Affiliation::None => "none",
            Affiliation::Member => "member",
            Affiliation::Admin => "admin",
            Affiliation::Owner => "owner",
        }
    }
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "outcast" => Affiliation::Outcast,
            "none" => Affiliation::None,
            "member" => Affiliation::Member,
            "admin" => Affiliation::Admin,
            "owner" => Affiliation::Owner,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    None,
    Visitor,
    Participant,
    Moderator,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::None => "none",
            Role::Visitor => "visitor",
            Role::Participant => "participant",
            Role::Moderator => "moderator",
        }
    }
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "none" => Role::None,
            "visitor" => Role::Visitor,
            "participant" => Role::Participant,
            "moderator" => Role::Moderator,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone)]
pub struct RoomConfig {
    pub name: String,
    pub description: String,
    pub persistent: bool,
    pub public: bool,
    pub members_only: bool,
    pub password: Option<String>,
    pub moderated: bool,
    pub max_occupants: usize,
    /// Real JIDs visible to everyone (non-anonymous) rather than moderators only.
    pub whois_anyone: bool,
    pub change_subject: bool,
    pub allow_invites: bool,
    pub history_length: usize,
    /// Keep a message archive (XEP-0313) of the room.
    pub archive: bool,
}

struct Occupant {
    nick: String,
    bare: BareJid,
    role: Role,
    /// Each session (device) of the user under this nick, with its presence.
    sessions: Vec<(FullJid, Element)>,
}

struct HistoryItem {
    /// The groupchat message as broadcast (from room/nick, no `to`).
    msg: Element,
    at: i64,
    chars: usize,
}

pub struct Room {
    pub jid: BareJid,
    pub config: RoomConfig,
    affiliations: HashMap<BareJid, Affiliation>,
    occupants: Vec<Occupant>,
    history: VecDeque<HistoryItem>,
    subject: Option<(String, String)>,
    /// Just created: the first join gets status 201.
    fresh: bool,
    /// Configuration, affiliations or subject changed since last persisted.
    dirty: bool,
    /// A copy is in storage.
    stored: bool,
    /// Messages to add to the room archive.
    to_archive: Vec<NewArchived>,
    /// Serialises archive-then-deliver of groupchat messages (async path).
    pub send_lock: std::sync::Arc<tokio::sync::Mutex<()>>,
}

/// A checked groupchat message waiting for its archive row to be stored.
pub struct Prepared {
    pub original: Element,
    out: Element,
    pub row: Option<NewArchived>,
    /// Body length, for history (None: not kept in history).
    chars: Option<usize>,
}

/// What to do in storage after a change.
pub enum Persist {
    Save(StoredRoom),
    Delete(String),
    Archive(NewArchived),
}

fn esc(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\n', "\\n")
}

fn unesc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c == '\\' {
            match it.next() {
                Some('n') => out.push('\n'),
                Some(o) => out.push(o),
                None => {}
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn occupant_jid(room: &BareJid, nick: &str) -> String {
    format!("{room}/{nick}")
}

impl Room {
    pub fn new(jid: BareJid, creator: BareJid, defaults: &MucModuleConfig) -> Room {
        let mut affiliations = HashMap::new();
        affiliations.insert(creator, Affiliation::Owner);
        Room {
            config: RoomConfig {
                name: jid.node().map(|n| n.to_string()).unwrap_or_default(),
                description: String::new(),
                persistent: false,
                public: true,
                members_only: false,
                password: None,
                moderated: false,
                max_occupants: defaults.max_occupants,
                whois_anyone: false,
                change_subject: false,
                allow_invites: true,
                history_length: defaults.history_length,
                archive: true,
            },
            jid,
            affiliations,
            occupants: Vec::new(),
            history: VecDeque::new(),
            subject: None,
            fresh: true,
            dirty: false,
            stored: false,
            to_archive: Vec::new(),
            send_lock: Default::default(),
        }
    }

    /// Whether messages are archived and members may query them.
    pub fn archives(&self, server: &Server) -> bool {
        self.config.archive && server.modules.enabled("mam")
    }

    /// May `who` read the room archive? Occupants, and anyone who could join.
    pub fn may_read_archive(&self, who: &FullJid) -> bool {
        let aff = self.affiliation(&who.bare());
        self.by_session(who).is_some()
            || (aff != Affiliation::Outcast
                && (!self.config.members_only || aff >= Affiliation::Member))
    }

    /// The storable form of a persistent room.
    fn stored_form(&self) -> StoredRoom {
        let c = &self.config;
        let config = [
            ("name", esc(&c.name)),
            ("description", esc(&c.description)),
            ("public", c.public.to_string()),
            ("members_only", c.members_only.to_string()),
            ("password", esc(c.password.as_deref().unwrap_or(""))),
            ("moderated", c.moderated.to_string()),
            ("max_occupants", c.max_occupants.to_string()),
            ("whois_anyone", c.whois_anyone.to_string()),
            ("change_subject", c.change_subject.to_string()),
            ("allow_invites", c.allow_invites.to_string()),
            ("history_length", c.history_length.to_string()),
            ("archive", c.archive.to_string()),
        ]
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("\n");
        let (subject, by) = self.subject.clone().unwrap_or_default();
        StoredRoom {
            jid: self.jid.to_string(),
            config,
            subject,
            subject_by: by,
            affiliations: self
                .affiliations
                .iter()
                .map(|(j, a)| (j.to_string(), a.as_str().to_string()))
                .collect(),
        }
    }

    /// A persistent room as loaded at start-up.
    pub fn from_stored(r: &StoredRoom, defaults: &MucModuleConfig) -> Option<Room> {
        let jid = BareJid::new(&r.jid).ok()?;
        let mut room = Room::new(jid, BareJid::new("nobody@invalid").ok()?, defaults);
        room.affiliations.clear();
        for (j, a) in &r.affiliations {
            if let (Ok(j), Some(a)) = (BareJid::new(j), Affiliation::parse(a)) {
                room.affiliations.insert(j, a);
            }
        }
        let c = &mut room.config;
        c.persistent = true;
        for line in r.config.lines() {
            let Some((k, v)) = line.split_once('=') else {
                continue;
            };
            let b = v == "true";
            match k {
                "name" => c.name = unesc(v),
                "description" => c.description = unesc(v),
                "public" => c.public = b,
                "members_only" => c.members_only = b,
                "password" => c.password = Some(unesc(v)).filter(|p| !p.is_empty()),
                "moderated" => c.moderated = b,
                "max_occupants" => c.max_occupants = v.parse().unwrap_or(c.max_occupants),
                "whois_anyone" => c.whois_anyone = b,
                "change_subject" => c.change_subject = b,
                "allow_invites" => c.allow_invites = b,
                "history_length" => c.history_length = v.parse().unwrap_or(c.history_length),
                "archive" => c.archive = b,
                _ => {}
            }
        }
        if !r.subject.is_empty() {
            room.subject = Some((r.subject.clone(), r.subject_by.clone()));
        }
        room.fresh = false;
        room.stored = true;
        Some(room)
    }

    /// What storage needs after the last operation.
    pub fn take_persistence(&mut self) -> Vec<Persist> {
        let mut ops: Vec<Persist> = self.to_archive.drain(..).map(Persist::Archive).collect();
        if std::mem::take(&mut self.dirty) {
            if self.config.persistent {
                self.stored = true;
                ops.push(Persist::Save(self.stored_form()));
            } else if std::mem::take(&mut self.stored) {
                ops.push(Persist::Delete(self.jid.to_string()));
            }
        }
        ops
    }

    pub fn display_name(&self) -> &str {
        if self.config.name.is_empty() {
            self.jid.node().map(|n| n.as_str()).unwrap_or("")
        } else {
            &self.config.name
        }
    }

    pub fn is_owner(&self, bare: &BareJid) -> bool {
        self.affiliation(bare) == Affiliation::Owner
    }

    pub fn is_empty(&self) -> bool {
        self.occupants.is_empty()
    }

    fn affiliation(&self, bare: &BareJid) -> Affiliation {
        self.affiliations
            .get(bare)
            .copied()
            .unwrap_or(Affiliation::None)
    }

    fn by_session(&self, jid: &FullJid) -> Option<usize> {
        self.occupants
            .iter()
            .position(|o| o.sessions.iter().any(|(j, _)| j == jid))
    }

    fn by_nick(&self, nick: &str) -> Option<usize> {
        self.occupants.iter().position(|o| o.nick == nick)
    }

    fn default_role(&self, aff: Affiliation) -> Role {
        match aff {
            Affiliation::Owner | Affiliation::Admin => Role::Moderator,
            _ if self.config.moderated && aff == Affiliation::None => Role::Visitor,
            _ => Role::Participant,
        }
    }

    /// The `<item/>` describing occupant `i`, with the real JID when `to_moderator` or non-anonymous.
    fn item(&self, i: usize, reveal: bool, session: Option<&FullJid>) -> Element {
        let o = &self.occupants[i];
        let mut b = el("item", NS_USER)
            .a("affiliation", self.affiliation(&o.bare).as_str())
            .a("role", o.role.as_str());
        if reveal || self.config.whois_anyone {
            let j = session
                .map(|s| s.to_string())
                .unwrap_or_else(|| o.bare.to_string());
            b = b.a("jid", j);
        }
        b.build()
    }

    fn is_moderator_session(&self, jid: &FullJid) -> bool {
        self.by_session(jid)
            .is_some_and(|i| self.occupants[i].role == Role::Moderator)
    }

    /// Occupant `i`'s presence as `recipient` sees it.
    fn presence_of(&self, i: usize, recipient: &FullJid, codes: &[u16]) -> Element {
        let o = &self.occupants[i];
        let (session, base) = o
            .sessions
            .last()
            .map(|(j, p)| (Some(j), p.clone()))
            .unwrap_or((None, el("presence", ns::CLIENT).build()));
        let mut p = el("presence", ns::CLIENT)
            .a("from", occupant_jid(&self.jid, &o.nick))
            .a("to", recipient.as_str());
        for c in base.children() {
            if c.ns() != NS && c.ns() != NS_USER {
                p = p.c(c.clone());
            }
        }
        let reveal = self.is_moderator_session(recipient);
        p.c(user_x(self.item(i, reveal, session), codes)).build()
    }

    fn all_sessions(&self) -> Vec<FullJid> {
        self.occupants
            .iter()
            .flat_map(|o| o.sessions.iter().map(|(j, _)| j.clone()))
            .collect()
    }

    /// Send occupant `i`'s presence to everyone; its own sessions get `self_codes` too.
    fn broadcast_presence(&self, server: &Server, i: usize, codes: &[u16], self_codes: &[u16]) {
        let own: Vec<FullJid> = self.occupants[i]
            .sessions
            .iter()
            .map(|(j, _)| j.clone())
            .collect();
        for to in self.all_sessions() {
            let mine = own.contains(&to);
            let mut c: Vec<u16> = codes.to_vec();
            if mine {
                c.extend_from_slice(self_codes);
                c.push(110);
            }
            send(server, &to, &self.presence_of(i, &to, &c));
        }
    }

    fn send_unavailable(
        &self,
        server: &Server,
        o: &Occupant,
        recipients: &[FullJid],
        codes: &[u16],
        item_extra: Option<Element>,
    ) {
        let aff = self.affiliation(&o.bare);
        for to in recipients {
            let mine = o.sessions.iter().any(|(j, _)| j == to);
            let mut c = codes.to_vec();
            if mine {
                c.push(110);
            }
            let mut item = el("item", NS_USER)
                .a("affiliation", aff.as_str())
                .a("role", "none");
            if let Some(nick) = item_extra.as_ref().and_then(|e| e.attr("nick")) {
                item = item.a("nick", nick);
            }
            if let Some(extra) = &item_extra {
                for ch in extra.children() {
                    item = item.c(ch.clone());
                }
            }
            let p = el("presence", ns::CLIENT)
                .a("from", occupant_jid(&self.jid, &o.nick))
                .a("to", to.as_str())
                .a("type", "unavailable")
                .c(user_x(item.build(), &c))
                .build();
            send(server, to, &p);
        }
    }

    pub fn join_or_update(&mut self, server: &Server, p: Element, from: &FullJid, nick: String) {
        let nick = nick.trim().to_string();
        if nick.is_empty() {
            return reply(server, &p, "jid-malformed", Some("a nickname is required"));
        }
        let mut stored = p.clone();
        stored.unset("to");
        if let Some(i) = self.by_session(from) {
            if self.occupants[i].nick == nick {
                // A status change.
                if let Some(s) = self.occupants[i]
                    .sessions
                    .iter_mut()
                    .find(|(j, _)| j == from)
                {
                    s.1 = stored;
                }
                return self.broadcast_presence(server, i, &[], &[]);
            }
            return self.change_nick(server, p, i, nick);
        }
        self.join(server, p, stored, from, nick);
    }

    fn join(&mut self, server: &Server, p: Element, stored: Element, from: &FullJid, nick: String) {
        let bare = from.bare();
        let aff = self.affiliation(&bare);
        if aff == Affiliation::Outcast {
            return reply(
                server,
                &p,
                "forbidden",
                Some("you are banned from this room"),
            );
        }
        if self.config.members_only && aff < Affiliation::Member {
            return reply(server, &p, "registration-required", Some("members only"));
        }
        if let Some(pw) = &self.config.password {
            let given = p
                .get_child("x", NS)
                .and_then(|x| x.get_child("password", NS))
                .map(|e| e.text());
            if given.as_deref() != Some(pw.as_str()) && aff < Affiliation::Owner {
                return reply(server, &p, "not-authorized", Some("a password is required"));
            }
        }
        let existing = self.by_nick(&nick);
        if let Some(i) = existing
            && self.occupants[i].bare != bare
        {
            return reply(server, &p, "conflict", Some("that nickname is in use"));
        }
        if existing.is_none()
            && self.occupants.len() >= self.config.max_occupants
            && aff < Affiliation::Admin
        {
            return reply(server, &p, "service-unavailable", Some("the room is full"));
        }
        let created = std::mem::take(&mut self.fresh);
        let i = match existing {
            // Another device of the same user joins under the same nick.
            Some(i) => {
                self.occupants[i].sessions.push((from.clone(), stored));
                i
            }
            None => {
                let role = self.default_role(aff);
                self.occupants.push(Occupant {
                    nick: nick.clone(),
                    bare: bare.clone(),
                    role,
                    sessions: vec![(from.clone(), stored)],
                });
                self.occupants.len() - 1
            }
        };
        // Existing occupants first, to the newcomer.
        for j in 0..self.occupants.len() {
            if j != i {
                send(server, from, &self.presence_of(j, from, &[]));
            }
        }
        let mut self_codes = vec![];
        if self.config.whois_anyone {
            self_codes.push(100);
        }
        if self.archives(server) {
            // The room is logged (archived).
            self_codes.push(170);
        }
        if created {
            self_codes.push(201);
        }
        if existing.is_some() {
            // Only the new device needs the full picture; the others already know this occupant.
            let mut c = self_codes.clone();
            c.push(110);
            send(server, from, &self.presence_of(i, from, &c));
        } else {
            self.broadcast_presence(server, i, &[], &self_codes);
        }
        self.send_history(
            server,
            from,
            p.get_child("x", NS)
                .and_then(|x| x.get_child("history", NS)),
        );
        // The subject always comes last (XEP-0045 §7.2.15), empty if none.
        let (subject, by) = self.subject.clone().unwrap_or_default();
        let mut m = el("message", ns::CLIENT)
            .a("type", "groupchat")
            .a("to", from.as_str())
            .a(
                "from",
                if by.is_empty() {
                    self.jid.to_string()
                } else {
                    occupant_jid(&self.jid, &by)
                },
            )
            .a("id", crate::c2s::new_id());
        m = m.c(el("subject", ns::CLIENT).t(&subject).build());
        send(server, from, &m.build());
    }

    fn send_history(&self, server: &Server, to: &FullJid, spec: Option<&Element>) {
        let max_stanzas = spec
            .and_then(|h| h.attr("maxstanzas"))
            .and_then(|v| v.parse::<usize>().ok());
        let max_chars = spec
            .and_then(|h| h.attr("maxchars"))
            .and_then(|v| v.parse::<usize>().ok());
        let seconds = spec
            .and_then(|h| h.attr("seconds"))
            .and_then(|v| v.parse::<i64>().ok());
        let since = spec.and_then(|h| h.attr("since")).and_then(parse_datetime);
        let now = now_micros();
        let mut picked: Vec<&HistoryItem> = Vec::new();
        let mut chars = 0;
        for h in self.history.iter().rev() {
            if max_stanzas.is_some_and(|m| picked.len() >= m) {
                break;
            }
            if seconds.is_some_and(|s| h.at < now - s * 1_000_000)
                || since.is_some_and(|s| h.at < s)
            {
                break;
            }
            chars += h.chars;
            if max_chars.is_some_and(|m| chars > m) {
                break;
            }
            picked.push(h);
        }
        for h in picked.into_iter().rev() {
            let mut m = h.msg.clone();
            m.set("to", to.as_str());
            m.append_child(
                el("delay", ns::DELAY)
                    .a("from", self.jid.as_str())
                    .a("stamp", xmpp_datetime_micros(h.at))
                    .build(),
            );
            send(server, to, &m);
        }
    }

    fn change_nick(&mut self, server: &Server, p: Element, i: usize, nick: String) {
        if self.by_nick(&nick).is_some() {
            return reply(server, &p, "conflict", Some("that nickname is in use"));
        }
        let old = &self.occupants[i];
        let recipients = self.all_sessions();
        let extra = el("item", NS_USER).a("nick", nick.as_str()).build();
        let snapshot = Occupant {
            nick: old.nick.clone(),
            bare: old.bare.clone(),
            role: old.role,
            sessions: old.sessions.clone(),
        };
        self.send_unavailable(server, &snapshot, &recipients, &[303], Some(extra));
        self.occupants[i].nick = nick;
        self.broadcast_presence(server, i, &[], &[]);
    }

    pub fn leave(&mut self, server: &Server, from: &FullJid, status: Option<String>) {
        let Some(i) = self.by_session(from) else {
            return;
        };
        let o = &mut self.occupants[i];
        if o.sessions.len() > 1 {
            // One device leaves; the occupant stays.
            o.sessions.retain(|(j, _)| j != from);
            let p = el("presence", ns::CLIENT)
                .a("from", occupant_jid(&self.jid, &o.nick))
                .a("to", from.as_str())
                .a("type", "unavailable")
                .c(user_x(
                    el("item", NS_USER)
                        .a("affiliation", "none")
                        .a("role", "none")
                        .build(),
                    &[110],
                ))
                .build();
            send(server, from, &p);
            return;
        }
        let o = self.occupants.remove(i);
        let mut recipients = self.all_sessions();
        recipients.push(from.clone());
        let _ = status;
        self.send_unavailable(server, &o, &recipients, &[], None);
    }

    /// Handle a message to the room; a groupchat message comes back prepared
    /// for `deliver` once archived.
    pub fn message(
        &mut self,
        server: &Server,
        m: Element,
        from: &FullJid,
        nick: Option<&str>,
    ) -> Option<Prepared> {
        let Some(i) = self.by_session(from) else {
            // Mediated invitations and declines may come from non-occupants too.
            if nick.is_none() && self.invitation(server, &m, from) {
                return None;
            }
            if m.attr("type") != Some("error") {
                reply(
                    server,
                    &m,
                    "not-acceptable",
                    Some("only occupants may send messages here"),
                );
            }
            return None;
        };
        match (m.attr("type"), nick) {
            (Some("groupchat"), None) => return self.groupchat(server, m, i),
            (Some("error"), _) => {}
            (_, Some(to_nick)) => self.private_message(server, m, i, to_nick),
            (_, None) => {
                if !self.invitation(server, &m, from) {
                    reply(server, &m, "bad-request", None);
                }
            }
        }
        None
    }

    /// Check and stamp a groupchat message; delivery is `deliver`, after the
    /// archive row (if any) is stored.
    fn groupchat(&mut self, server: &Server, m: Element, i: usize) -> Option<Prepared> {
        let o = &self.occupants[i];
        if o.role < Role::Participant {
            reply(
                server,
                &m,
                "forbidden",
                Some("you have no voice in this room"),
            );
            return None;
        }
        let nick = o.nick.clone();
        if let Some(subject) = m.get_child("subject", ns::CLIENT) {
            if !(o.role == Role::Moderator || self.config.change_subject) {
                reply(
                    server,
                    &m,
                    "forbidden",
                    Some("you may not change the subject"),
                );
                return None;
            }
            self.subject = Some((subject.text(), nick.clone()));
            self.dirty = true;
        }
        let mut out = m.clone();
        out.set("from", &occupant_jid(&self.jid, &nick));
        out.unset("to");
        // XEP-0359: the room's own id for the message.
        let sid = crate::c2s::new_id();
        out.append_child(
            el("stanza-id", crate::xep::mam::SID)
                .a("id", sid.as_str())
                .a("by", self.jid.as_str())
                .build(),
        );
        let row = (self.archives(server) && crate::xep::mam::archivable_groupchat(&m)).then(|| {
            NewArchived {
                owner: self.jid.to_string(),
                stanza_id: sid,
                with: occupant_jid(&self.jid, &nick),
                stanza: String::from_utf8(out.to_bytes()).unwrap_or_default(),
                created_at: now_micros(),
            }
        });
        let chars = m
            .get_child("body", ns::CLIENT)
            .map(|b| b.text().chars().count());
        Some(Prepared {
            original: m,
            out,
            row,
            chars,
        })
    }

    /// Send a prepared groupchat message to everyone and keep it in the history.
    pub fn deliver(&mut self, server: &Server, p: Prepared) {
        self.fan_out(server, &p.out);
        if let Some(chars) = p.chars
            && self.config.history_length > 0
        {
            self.history.push_back(HistoryItem {
                msg: p.out,
                at: now_micros(),
                chars,
            });
            while self.history.len() > self.config.history_length {
                self.history.pop_front();
            }
        }
    }

    /// Without an async caller: deliver now, archive behind (the room writer).
    pub fn deliver_now(&mut self, server: &Server, mut p: Prepared) {
        if let Some(row) = p.row.take() {
            self.to_archive.push(row);
        }
        self.deliver(server, p);
    }

    /// Serialize once, then splice each recipient's `to` into the start tag.
    fn fan_out(&self, server: &Server, msg: &Element) {
        let bytes = to_bytes(msg);
        let name_len = msg.name().len() + 1;
        for to in self.all_sessions() {
            let Some(h) = server.registry.session(&to) else {
                // Occupants of other servers get theirs through s2s.
                if crate::s2s::is_remote(server, to.domain().as_str()) {
                    send(server, &to, msg);
                }
                continue;
            };
            let mut b = Vec::with_capacity(bytes.len() + to.as_str().len() + 8);
            b.extend_from_slice(&bytes[..name_len]);
            b.extend_from_slice(b" to='");
            b.extend_from_slice(crate::xml::escape(to.as_str()).as_bytes());
            b.push(b'\'');
            b.extend_from_slice(&bytes[name_len..]);
            h.send(Bytes::from(b));
        }
    }

    fn private_message(&mut self, server: &Server, m: Element, i: usize, to_nick: &str) {
        let Some(t) = self.by_nick(to_nick) else {
            return reply(server, &m, "item-not-found", Some("no such occupant"));
        };
        let from = occupant_jid(&self.jid, &self.occupants[i].nick);
        let targets: Vec<FullJid> = self.occupants[t]
            .sessions
            .iter()
            .map(|(j, _)| j.clone())
            .collect();
        for to in targets {
            let mut out = readdress(&m, &from, to.as_str());
            if !out.has_child("x", NS_USER) {
                out.append_child(el("x", NS_USER).build());
            }
            send(server, &to, &out);
        }
    }

    /// Mediated invitation (XEP-0045 §7.8.2) or decline; `true` when handled.
    fn invitation(&mut self, server: &Server, m: &Element, from: &FullJid) -> bool {
        let Some(x) = m.get_child("x", NS_USER) else {
            return false;
        };
        if let Some(inv) = x.get_child("invite", NS_USER) {
            let Some(to) = inv.attr("to").and_then(|t| BareJid::new(t).ok()) else {
                reply(server, m, "jid-malformed", None);
                return true;
            };
            let aff = self.affiliation(&from.bare());
            let in_room = self.by_session(from).is_some();
            if !in_room || (!self.config.allow_invites && aff < Affiliation::Admin) {
                reply(
                    server,
                    m,
                    "forbidden",
                    Some("you may not invite to this room"),
                );
                return true;
            }
            if self.config.members_only && self.affiliation(&to) < Affiliation::Member {
                self.affiliations.insert(to.clone(), Affiliation::Member);
                self.dirty = true;
            }
            let mut invite = el("invite", NS_USER).a("from", from.bare().as_str());
            if let Some(r) = inv.get_child("reason", NS_USER) {
                invite = invite.c(r.clone());
            }
            let mut xb = el("x", NS_USER).c(invite.build());
            if let Some(pw) = &self.config.password {
                xb = xb.c(el("password", NS_USER).t(pw).build());
            }
            let out = el("message", ns::CLIENT)
                .a("from", self.jid.as_str())
                .a("to", to.as_str())
                .c(xb.build())
                .build();
            crate::im::to_jid(server, &Jid::from(to), &out);
            return true;
        }
        if let Some(dec) = x.get_child("decline", NS_USER) {
            let Some(to) = dec.attr("to").and_then(|t| Jid::new(t).ok()) else {
                return true;
            };
            let mut d = el("decline", NS_USER).a("from", from.bare().as_str());
            if let Some(r) = dec.get_child("reason", NS_USER) {
                d = d.c(r.clone());
            }
            let out = el("message", ns::CLIENT)
                .a("from", self.jid.as_str())
                .a("to", to.as_str())
                .c(el("x", NS_USER).c(d.build()).build())
                .build();
            crate::im::to_jid(server, &to, &out);
            return true;
        }
        false
    }

    /// IQs to the room (or an occupant); returns `true` when the room was destroyed.
    pub fn iq(
        &mut self,
        server: &Server,
        iq: &Element,
        from: &FullJid,
        nick: Option<&str>,
    ) -> bool {
        let Some(payload) = iq.first_child() else {
            return false;
        };
        let respond = |r: Option<Element>| {
            if let Some(r) = r {
                send(server, from, &r);
            }
        };
        if let Some(n) = nick {
            // XEP-0410 self-ping: answered for the occupant's own sessions.
            let own = self
                .by_nick(n)
                .is_some_and(|i| self.occupants[i].sessions.iter().any(|(j, _)| j == from));
            if payload.is("ping", ns::PING) && own {
                respond(Some(iq_result(iq, None)));
            } else if self.by_nick(n).is_none() || payload.is("ping", ns::PING) {
                respond(error_reply(iq, "not-acceptable", None));
            } else {
                respond(error_reply(iq, "service-unavailable", None));
            }
            return false;
        }
        let kind = iq.attr("type").unwrap_or("");
        let aff = self.affiliation(&from.bare());
        match (payload.name(), payload.ns().as_str(), kind) {
            ("query", ns::DISCO_INFO, "get") => {
                respond(Some(iq_result(iq, Some(self.disco_info()))))
            }
            ("query", ns::DISCO_ITEMS, "get") => respond(Some(iq_result(
                iq,
                Some(el("query", ns::DISCO_ITEMS).build()),
            ))),
            ("query", NS_OWNER, _) if aff != Affiliation::Owner => {
                respond(error_reply(iq, "forbidden", None))
            }
            ("query", NS_OWNER, "get") => respond(Some(iq_result(
                iq,
                Some(el("query", NS_OWNER).c(self.config_form()).build()),
            ))),
            ("query", NS_OWNER, "set") => {
                if let Some(d) = payload.get_child("destroy", NS_OWNER) {
                    self.destroy(server, d);
                    respond(Some(iq_result(iq, None)));
                    return true;
                }
                match payload.get_child("x", ns::DATA_FORMS) {
                    Some(x) if x.attr("type") == Some("cancel") => {
                        respond(Some(iq_result(iq, None)))
                    }
                    Some(x) => match self.apply_config(server, x) {
                        Ok(()) => respond(Some(iq_result(iq, None))),
                        Err(e) => respond(error_reply(iq, "not-acceptable", Some(&e))),
                    },
                    None => respond(error_reply(iq, "bad-request", None)),
                }
            }
            ("query", NS_ADMIN, "get") => respond(self.admin_get(iq, payload, from)),
            ("query", NS_ADMIN, "set") => respond(self.admin_set(server, iq, payload, from)),
            ("ping", ns::PING, "get") => respond(Some(iq_result(iq, None))),
            _ => respond(error_reply(iq, "service-unavailable", None)),
        }
        false
    }

    fn disco_info(&self) -> Element {
        let c = &self.config;
        let mut q = el("query", ns::DISCO_INFO).c(el("identity", ns::DISCO_INFO)
            .a("category", "conference")
            .a("type", "text")
            .a("name", self.display_name())
            .build());
        let features = [
            NS,
            "http://jabber.org/protocol/muc#stable_id",
            "http://jabber.org/protocol/muc#self-ping-optimization",
            crate::xep::mam::SID,
            if c.public { "muc_public" } else { "muc_hidden" },
            if c.persistent {
                "muc_persistent"
            } else {
                "muc_temporary"
            },
            if c.members_only {
                "muc_membersonly"
            } else {
                "muc_open"
            },
            if c.moderated {
                "muc_moderated"
            } else {
                "muc_unmoderated"
            },
            if c.whois_anyone {
                "muc_nonanonymous"
            } else {
                "muc_semianonymous"
            },
            if c.password.is_some() {
                "muc_passwordprotected"
            } else {
                "muc_unsecured"
            },
            if c.archive {
                crate::xep::mam::NS
            } else {
                "muc_unlogged"
            },
        ];
        for f in features {
            q = q.c(el("feature", ns::DISCO_INFO).a("var", f).build());
        }
        let field = |var: &str, val: &str| {
            el("field", ns::DATA_FORMS)
                .a("var", var)
                .c(el("value", ns::DATA_FORMS).t(val).build())
                .build()
        };
        let form = el("x", ns::DATA_FORMS)
            .a("type", "result")
            .c(el("field", ns::DATA_FORMS)
                .a("var", "FORM_TYPE")
                .a("type", "hidden")
                .c(el("value", ns::DATA_FORMS).t(NS_ROOMINFO).build())
                .build())
            .c(field("muc#roominfo_description", &c.description))
            .c(field(
                "muc#roominfo_occupants",
                &self.occupants.len().to_string(),
            ))
            .c(field("muc#roomconfig_roomname", self.display_name()))
            .c(field(
                "muc#roominfo_subject",
                &self.subject.clone().unwrap_or_default().0,
            ))
            .build();
        q.c(form).build()
    }

    fn config_form(&self) -> Element {
        let c = &self.config;
        let b = |v: bool| if v { "1" } else { "0" };
        let f = |var: &str, kind: &str, val: &str| {
            el("field", ns::DATA_FORMS)
                .a("var", var)
                .a("type", kind)
                .c(el("value", ns::DATA_FORMS).t(val).build())
                .build()
        };
        el("x", ns::DATA_FORMS)
            .a("type", "form")
            .c(f("FORM_TYPE", "hidden", NS_ROOMCONFIG))
            .c(f("muc#roomconfig_roomname", "text-single", &c.name))
            .c(f("muc#roomconfig_roomdesc", "text-single", &c.description))
            .c(f(
                "muc#roomconfig_persistentroom",
                "boolean",
                b(c.persistent),
            ))
            .c(f("muc#roomconfig_publicroom", "boolean", b(c.public)))
            .c(f(
                "muc#roomconfig_membersonly",
                "boolean",
                b(c.members_only),
            ))
            .c(f(
                "muc#roomconfig_passwordprotectedroom",
                "boolean",
                b(c.password.is_some()),
            ))
            .c(f(
                "muc#roomconfig_roomsecret",
                "text-private",
                c.password.as_deref().unwrap_or(""),
            ))
            .c(f("muc#roomconfig_moderatedroom", "boolean", b(c.moderated)))
            .c(f(
                "muc#roomconfig_maxusers",
                "text-single",
                &c.max_occupants.to_string(),
            ))
            .c(f(
                "muc#roomconfig_whois",
                "list-single",
                if c.whois_anyone {
                    "anyone"
                } else {
                    "moderators"
                },
            ))
            .c(f(
                "muc#roomconfig_changesubject",
                "boolean",
                b(c.change_subject),
            ))
            .c(f(
                "muc#roomconfig_allowinvites",
                "boolean",
                b(c.allow_invites),
            ))
            .c(f(
                "muc#maxhistoryfetch",
                "text-single",
                &c.history_length.to_string(),
            ))
            .build()
    }

    fn apply_config(&mut self, server: &Server, x: &Element) -> Result<(), String> {
        let mut c = self.config.clone();
        let mut password_protected = c.password.is_some();
        let mut secret = c.password.clone();
        for f in x.children().filter(|f| f.is("field", ns::DATA_FORMS)) {
            let v = f
                .get_child("value", ns::DATA_FORMS)
                .map(|v| v.text())
                .unwrap_or_default();
            let truthy = v == "1" || v == "true";
            match f.attr("var").unwrap_or("") {
                "muc#roomconfig_roomname" => c.name = v,
                "muc#roomconfig_roomdesc" => c.description = v,
                "muc#roomconfig_persistentroom" => c.persistent = truthy,
                "muc#roomconfig_publicroom" => c.public = truthy,
                "muc#roomconfig_membersonly" => c.members_only = truthy,
                "muc#roomconfig_passwordprotectedroom" => password_protected = truthy,
                "muc#roomconfig_roomsecret" => secret = Some(v).filter(|s| !s.is_empty()),
                "muc#roomconfig_moderatedroom" => c.moderated = truthy,
                "muc#roomconfig_maxusers" => {
                    c.max_occupants = v
                        .parse::<usize>()
                        .map_err(|_| "maxusers must be a number")?
                        .min(server.config.modules.muc.max_occupants)
                }
                "muc#roomconfig_whois" => c.whois_anyone = v == "anyone",
                "muc#roomconfig_changesubject" => c.change_subject = truthy,
                "muc#roomconfig_allowinvites" => c.allow_invites = truthy,
                "muc#roomconfig_enablearchiving" | "muc#roomconfig_enablelogging" => {
                    c.archive = truthy
                }
                "muc#maxhistoryfetch" | "muc#roomconfig_historylength" => {
                    c.history_length = v
                        .parse::<usize>()
                        .map_err(|_| "history length must be a number")?
                        .min(server.config.modules.muc.history_length.max(100))
                }
                _ => {}
            }
        }
        c.password = if password_protected { secret } else { None };
        if password_protected && c.password.is_none() {
            return Err("a password-protected room needs a password".into());
        }
        self.dirty = true;
        let became_members_only = c.members_only && !self.config.members_only;
        let anonymity_changed = c.whois_anyone != self.config.whois_anyone;
        self.config = c;
        let mut codes = vec![104];
        if anonymity_changed {
            codes.push(if self.config.whois_anyone { 172 } else { 173 });
        }
        let note = el("message", ns::CLIENT)
            .a("type", "groupchat")
            .a("from", self.jid.as_str())
            .c(el("x", NS_USER)
                .append_all(
                    codes
                        .iter()
                        .map(|c| el("status", NS_USER).a("code", c.to_string()).build()),
                )
                .build())
            .build();
        self.fan_out(server, &note);
        if became_members_only {
            // Non-members leave (status 322).
            let gone: Vec<usize> = (0..self.occupants.len())
                .filter(|&i| self.affiliation(&self.occupants[i].bare) < Affiliation::Member)
                .collect();
            self.remove_occupants(server, gone, &[322], None);
        }
        Ok(())
    }

    fn destroy(&mut self, server: &Server, d: &Element) {
        let mut extra = el("destroy", NS_USER);
        if let Some(alt) = d.attr("jid") {
            extra = extra.a("jid", alt);
        }
        if let Some(r) = d.get_child("reason", NS_OWNER) {
            extra = extra.c(el("reason", NS_USER).t(&r.text()).build());
        }
        let extra = extra.build();
        let occupants = std::mem::take(&mut self.occupants);
        for o in &occupants {
            for (to, _) in &o.sessions {
                let p = el("presence", ns::CLIENT)
                    .a("from", occupant_jid(&self.jid, &o.nick))
                    .a("to", to.as_str())
                    .a("type", "unavailable")
                    .c(el("x", NS_USER)
                        .c(el("item", NS_USER)
                            .a("affiliation", "none")
                            .a("role", "none")
                            .build())
                        .c(extra.clone())
                        .build())
                    .build();
                send(server, to, &p);
            }
        }
        self.config.persistent = false;
        self.dirty = true;
    }

    fn admin_get(&self, iq: &Element, q: &Element, from: &FullJid) -> Option<Element> {
        let item = q.get_child("item", NS_ADMIN)?;
        let mut out = el("query", NS_ADMIN);
        if let Some(a) = item.attr("affiliation").and_then(Affiliation::parse) {
            if self.affiliation(&from.bare()) < Affiliation::Admin
                && !(a == Affiliation::Member && self.by_session(from).is_some())
            {
                return error_reply(iq, "forbidden", None);
            }
            for (j, _) in self.affiliations.iter().filter(|(_, x)| **x == a) {
                out = out.c(el("item", NS_ADMIN)
                    .a("affiliation", a.as_str())
                    .a("jid", j.as_str())
                    .build());
            }
        } else if let Some(r) = item.attr("role").and_then(Role::parse) {
            if !self.is_moderator_session(from) {
                return error_reply(iq, "forbidden", None);
            }
            for o in self.occupants.iter().filter(|o| o.role == r) {
                out = out.c(el("item", NS_ADMIN)
                    .a("role", r.as_str())
                    .a("nick", o.nick.as_str())
                    .a("jid", o.bare.as_str())
                    .build());
            }
        } else {
            return error_reply(iq, "bad-request", None);
        }
        Some(iq_result(iq, Some(out.build())))
    }

    fn admin_set(
        &mut self,
        server: &Server,
        iq: &Element,
        q: &Element,
        from: &FullJid,
    ) -> Option<Element> {
        let actor_aff = self.affiliation(&from.bare());
        let actor_is_mod = self.is_moderator_session(from);
        for item in q.children().filter(|c| c.is("item", NS_ADMIN)) {
            let reason = item.get_child("reason", NS_ADMIN).map(|r| r.text());
            if let Some(role) = item.attr("role").and_then(Role::parse) {
                let Some(i) = item.attr("nick").and_then(|n| self.by_nick(n)) else {
                    return error_reply(iq, "item-not-found", None);
                };
                let target_aff = self.affiliation(&self.occupants[i].bare);
                let allowed = match role {
                    Role::Moderator => actor_aff >= Affiliation::Admin,
                    _ => {
                        actor_is_mod && (target_aff < Affiliation::Admin || actor_aff > target_aff)
                    }
                };
                if !allowed {
                    return error_reply(iq, "not-allowed", None);
                }
                if role == Role::None {
                    self.remove_occupants(server, vec![i], &[307], reason.as_deref());
                } else {
                    self.occupants[i].role = role;
                    self.broadcast_presence(server, i, &[], &[]);
                }
            } else if let Some(aff) = item.attr("affiliation").and_then(Affiliation::parse) {
                let Some(target) = item
                    .attr("jid")
                    .and_then(|j| Jid::new(j).ok())
                    .map(|j| j.bare())
                else {
                    return error_reply(
                        iq,
                        "bad-request",
                        Some("an affiliation change needs a jid"),
                    );
                };
                let current = self.affiliation(&target);
                let allowed = if aff >= Affiliation::Admin || current >= Affiliation::Admin {
                    actor_aff == Affiliation::Owner
                } else {
                    actor_aff >= Affiliation::Admin
                };
                if !allowed {
                    return error_reply(iq, "not-allowed", None);
                }
                if current == Affiliation::Owner
                    && aff != Affiliation::Owner
                    && self
                        .affiliations
                        .values()
                        .filter(|a| **a == Affiliation::Owner)
                        .count()
                        == 1
                {
                    return error_reply(iq, "conflict", Some("a room keeps at least one owner"));
                }
                self.dirty = true;
                if aff == Affiliation::None {
                    self.affiliations.remove(&target);
                } else {
                    self.affiliations.insert(target.clone(), aff);
                }
                let present: Vec<usize> = (0..self.occupants.len())
                    .filter(|&i| self.occupants[i].bare == target)
                    .collect();
                if aff == Affiliation::Outcast {
                    self.remove_occupants(server, present, &[301], reason.as_deref());
                } else if self.config.members_only && aff < Affiliation::Member {
                    self.remove_occupants(server, present, &[321], reason.as_deref());
                } else {
                    for i in present {
                        self.occupants[i].role = self.default_role(aff);
                        self.broadcast_presence(server, i, &[], &[]);
                    }
                }
            } else {
                return error_reply(iq, "bad-request", None);
            }
        }
        Some(iq_result(iq, None))
    }

    /// Everyone leaves (service shutdown), told with `codes`.
    pub fn remove_everyone(&mut self, server: &Server, codes: &[u16]) {
        let all: Vec<usize> = (0..self.occupants.len()).collect();
        self.remove_occupants(server, all, codes, None);
    }

    /// Remove occupants (kick, ban, members-only) telling everyone, with `codes`.
    fn remove_occupants(
        &mut self,
        server: &Server,
        mut idx: Vec<usize>,
        codes: &[u16],
        reason: Option<&str>,
    ) {
        idx.sort_unstable();
        let removed: Vec<Occupant> = idx
            .into_iter()
            .rev()
            .map(|i| self.occupants.remove(i))
            .collect();
        let remaining = self.all_sessions();
        for o in &removed {
            let mut recipients = remaining.clone();
            recipients.extend(o.sessions.iter().map(|(j, _)| j.clone()));
            let extra = reason.map(|r| {
                el("item", NS_USER)
                    .c(el("reason", NS_USER).t(r).build())
                    .build()
            });
            self.send_unavailable(server, o, &recipients, codes, extra);
        }
    }
}
