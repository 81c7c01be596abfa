//! XEP-0045 Multi-User Chat as an internal component on `conference.<host>`.
//!
//! Room state lives in memory behind short, synchronous locks: handling a
//! stanza never awaits while a room is locked, so every routing path (even
//! the synchronous `im::to_jid`) can hand stanzas to the service. Outbound
//! stanzas go straight into the recipients' session queues.

mod room;

use crate::router::to_bytes;
use crate::server::Server;
use crate::stanza::{error_reply, iq_result};
use crate::util::Bare;
use crate::xml::{BuilderExt, ElementExt, el, ns};
use jid::{BareJid, FullJid, Jid};
use minidom::Element;
use room::{Persist, Room};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

pub const NS: &str = "http://jabber.org/protocol/muc";
pub const NS_USER: &str = "http://jabber.org/protocol/muc#user";
pub const NS_ADMIN: &str = "http://jabber.org/protocol/muc#admin";
pub const NS_OWNER: &str = "http://jabber.org/protocol/muc#owner";
pub const NS_ROOMCONFIG: &str = "http://jabber.org/protocol/muc#roomconfig";
pub const NS_ROOMINFO: &str = "http://jabber.org/protocol/muc#roominfo";

#[derive(Default)]
pub struct MucService {
    domains: Vec<String>,
    rooms: Mutex<HashMap<BareJid, Arc<Mutex<Room>>>>,
    /// Ordered writes of persistent rooms (one writer task keeps them in order).
    persist: Mutex<Option<tokio::sync::mpsc::Sender<Persist>>>,
}

const PERSIST_QUEUE: usize = 10_000;

/// Deliver a stanza built by the service to a user's session, here or on
/// the occupant's own server (federation).
fn send(server: &Server, to: &FullJid, e: &Element) {
    if crate::s2s::is_remote(server, to.domain().as_str()) {
        let mut out = e.clone();
        out.set("to", to.as_str());
        crate::s2s::send(server, out);
    } else if let Some(h) = server.registry.session(to) {
        h.send(to_bytes(e));
    }
}

fn reply(server: &Server, stanza: &Element, condition: &str, text: Option<&str>) {
    if let Some(r) = error_reply(stanza, condition, text)
        && let Some(to) = r.attr("to").and_then(|t| FullJid::new(t).ok())
    {
        send(server, &to, &r);
    }
}

impl MucService {
    pub fn new(config: &crate::config::Config) -> Self {
        let enabled = config.modules.enabled.iter().any(|m| m == "muc");
        MucService {
            domains: if enabled {
                config
                    .hosts
                    .iter()
                    .map(|h| format!("{}.{h}", config.modules.muc.subdomain))
                    .collect()
            } else {
                Vec::new()
            },
            rooms: Mutex::new(HashMap::new()),
            persist: Mutex::new(None),
        }
    }

    /// Load persistent rooms and start the writer that keeps storage in step.
    pub async fn start(
        server: &Arc<Server>,
    ) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
        if server.muc.domains.is_empty() {
            return Ok(None);
        }
        let stored = server.storage.muc.load_rooms().await?;
        {
            let mut rooms = server.muc.rooms.lock().unwrap();
            for r in &stored {
                if let Some(room) = Room::from_stored(r, &server.config.modules.muc) {
                    rooms.insert(room.jid.clone(), Arc::new(Mutex::new(room)));
                }
            }
        }
        tracing::info!(rooms = stored.len(), "persistent rooms loaded");
        let (tx, mut rx) = tokio::sync::mpsc::channel(PERSIST_QUEUE);
        *server.muc.persist.lock().unwrap() = Some(tx);
        let store = server.storage.muc.clone();
        let archive = server.storage.archive.clone();
        Ok(Some(tokio::spawn(async move {
            // Archive rows that queue up while a write runs go in one insert (group commit).
            let mut rows = Vec::new();
            while let Some(first) = rx.recv().await {
                let mut next = Some(first);
                while let Some(op) = next.take() {
                    let r = match op {
                        Persist::Archive(row) => {
                            rows.push(row);
                            if rows.len() < 256
                                && let Ok(more) = rx.try_recv()
                            {
                                next = Some(more);
                                continue;
                            }
                            archive.archive(&std::mem::take(&mut rows)).await
                        }
                        other => {
                            if !rows.is_empty()
                                && let Err(e) = archive.archive(&std::mem::take(&mut rows)).await
                            {
                                tracing::error!(error = %e, "archiving room messages failed");
                            }
                            match other {
                                Persist::Save(room) => store.save_room(&room).await,
                                Persist::Delete(jid) => store.delete_room(&jid).await,
                                Persist::Archive(_) => unreachable!(),
                            }
                        }
                    };
                    if let Err(e) = r {
                        tracing::error!(error = %e, "saving room state failed");
                    }
                }
            }
        })))
    }

    /// A message from a local session to the service or a room. Groupchat
    /// messages are archived (group-committed) before anyone receives them,
    /// one at a time per room, so archive order is delivery order and every
    /// stanza-id a client saw can be queried.
    pub async fn handle_message(&self, server: &Server, msg: Element) {
        let (Some(from), Some(to)) = (
            msg.attr("from").and_then(|f| FullJid::new(f).ok()),
            msg.attr("to").and_then(|t| Jid::new(t).ok()),
        ) else {
            return;
        };
        let Some(room) = to.node().and_then(|_| self.room(&to.bare())) else {
            return self.handle(server, msg);
        };
        let send_lock = room.lock().unwrap().send_lock.clone();
        let _in_order = send_lock.lock().await;
        let prepared = {
            let mut r = room.lock().unwrap();
            let p = r.message(server, msg, &from, to.resource().map(|r| r.as_str()));
            self.persist(&mut r);
            p
        };
        let Some(mut p) = prepared else { return };
        if let Some(row) = p.row.take()
            && let Err(e) = server.archive_writer.append(vec![row]).await
        {
            tracing::error!(error = %e, "archiving a room message failed");
            reply(
                server,
                &p.original,
                "internal-server-error",
                Some("could not store the message"),
            );
            return;
        }
        let mut r = room.lock().unwrap();
        r.deliver(server, p);
        self.persist(&mut r);
    }

    /// The service stops: every occupant leaves with status 332 (XEP-0045 §9.10).
    pub fn shutdown(&self, server: &Server) {
        let rooms: Vec<Arc<Mutex<Room>>> = self.rooms.lock().unwrap().values().cloned().collect();
        for r in rooms {
            r.lock().unwrap().remove_everyone(server, &[332]);
        }
    }

    /// No more writes: the writer finishes what is queued and stops.
    pub fn close_persistence(&self) {
        self.persist.lock().unwrap().take();
    }

    fn persist(&self, room: &mut Room) {
        let ops = room.take_persistence();
        if ops.is_empty() {
            return;
        }
        let guard = self.persist.lock().unwrap();
        let Some(tx) = guard.as_ref() else { return };
        for op in ops {
            if tx.try_send(op).is_err() {
                tracing::error!(room = %room.jid, "room persistence queue full; change not saved");
            }
        }
    }

    /// A MAM query to a room (XEP-0313 on the room JID), answered asynchronously.
    pub async fn mam_query(
        &self,
        server: &Server,
        iq: &Element,
        from: &FullJid,
    ) -> Option<Element> {
        let q = iq.first_child()?;
        let room_jid = iq.attr("to").and_then(|t| BareJid::new(t).ok())?;
        let allowed = match self.room(&room_jid) {
            Some(r) => {
                let r = r.lock().unwrap();
                if !r.archives(server) {
                    return error_reply(
                        iq,
                        "service-unavailable",
                        Some("this room is not archived"),
                    );
                }
                r.may_read_archive(from)
            }
            None => return error_reply(iq, "item-not-found", Some("no such room")),
        };
        if !allowed {
            return error_reply(iq, "forbidden", None);
        }
        Some(crate::xep::mam::run_query(server, iq, q, from, &room_jid).await)
    }

    pub fn domains(&self) -> &[String] {
        &self.domains
    }

    /// Whether stanzas to `domain` belong to this service.
    pub fn handles(&self, domain: &str) -> bool {
        self.domains.iter().any(|d| d == domain)
    }

    pub fn room_count(&self) -> usize {
        self.rooms.lock().unwrap().len()
    }

    fn room(&self, jid: &BareJid) -> Option<Arc<Mutex<Room>>> {
        self.rooms.lock().unwrap().get(jid).cloned()
    }

    /// Handle a stanza from a local user (full JID in `from`) to the service or a room.
    pub fn handle(&self, server: &Server, stanza: Element) {
        let (Some(from), Some(to)) = (
            stanza.attr("from").and_then(|f| FullJid::new(f).ok()),
            stanza.attr("to").and_then(|t| Jid::new(t).ok()),
        ) else {
            return;
        };
        if to.node().is_none() {
            return self.service_stanza(server, &stanza, &to);
        }
        let room_jid = to.bare();
        match stanza.name() {
            "presence" => self.presence(
                server,
                stanza,
                from,
                room_jid,
                to.resource().map(|r| r.to_string()),
            ),
            "message" => match self.room(&room_jid) {
                Some(r) => {
                    let mut r = r.lock().unwrap();
                    if let Some(p) =
                        r.message(server, stanza, &from, to.resource().map(|r| r.as_str()))
                    {
                        r.deliver_now(server, p);
                    }
                    self.persist(&mut r);
                }
                None => reply(server, &stanza, "item-not-found", Some("no such room")),
            },
            _ => self.room_iq(
                server,
                stanza,
                &from,
                &room_jid,
                to.resource().map(|r| r.to_string()),
            ),
        }
    }

    fn presence(
        &self,
        server: &Server,
        p: Element,
        from: FullJid,
        room_jid: BareJid,
        nick: Option<String>,
    ) {
        let leaving = p.attr("type") == Some("unavailable");
        if !leaving && p.attr("type").is_some() {
            return;
        }
        let existing = self.room(&room_jid);
        let room = match existing {
            Some(r) => r,
            None if leaving => return,
            None => {
                if nick.as_deref().is_none_or(|n| n.trim().is_empty()) {
                    return reply(server, &p, "jid-malformed", Some("a nickname is required"));
                }
                let mut rooms = self.rooms.lock().unwrap();
                if rooms.len() >= server.config.modules.muc.max_rooms {
                    drop(rooms);
                    return reply(server, &p, "resource-constraint", Some("too many rooms"));
                }
                // Creation is rare: counting the creator's rooms by scanning is cheap enough.
                let creator = from.bare();
                let owned = rooms
                    .values()
                    .filter(|r| r.lock().unwrap().is_owner(&creator))
                    .count();
                if owned >= server.config.modules.muc.max_rooms_per_user {
                    drop(rooms);
                    return reply(server, &p, "not-allowed", Some("you own too many rooms"));
                }
                let created = rooms.entry(room_jid.clone()).or_insert_with(|| {
                    Arc::new(Mutex::new(Room::new(
                        room_jid.clone(),
                        from.bare(),
                        &server.config.modules.muc,
                    )))
                });
                created.clone()
            }
        };
        let empty = {
            let mut r = room.lock().unwrap();
            if leaving {
                r.leave(
                    server,
                    &from,
                    p.get_child("status", ns::CLIENT).map(|s| s.text()),
                );
            } else {
                r.join_or_update(server, p, &from, nick.unwrap_or_default());
            }
            self.persist(&mut r);
            r.is_empty() && !r.config.persistent
        };
        if empty {
            self.rooms.lock().unwrap().remove(&room_jid);
        }
    }

    fn room_iq(
        &self,
        server: &Server,
        iq: Element,
        from: &FullJid,
        room_jid: &BareJid,
        nick: Option<String>,
    ) {
        if !matches!(iq.attr("type"), Some("get" | "set")) {
            return;
        }
        let Some(room) = self.room(room_jid) else {
            return reply(server, &iq, "item-not-found", Some("no such room"));
        };
        let destroyed = {
            let mut r = room.lock().unwrap();
            let destroyed = r.iq(server, &iq, from, nick.as_deref());
            self.persist(&mut r);
            destroyed
        };
        if destroyed {
            self.rooms.lock().unwrap().remove(room_jid);
        }
    }

    /// IQs to the service itself: disco and ping.
    fn service_stanza(&self, server: &Server, stanza: &Element, to: &Jid) {
        if stanza.name() != "iq" || !matches!(stanza.attr("type"), Some("get" | "set")) {
            if stanza.name() == "message" {
                reply(server, stanza, "service-unavailable", None);
            }
            return;
        }
        let Some(payload) = stanza.first_child() else {
            return;
        };
        let answer = if payload.is("query", ns::DISCO_INFO) {
            let mut q = el("query", ns::DISCO_INFO).c(el("identity", ns::DISCO_INFO)
                .a("category", "conference")
                .a("type", "text")
                .a("name", "Chatrooms")
                .build());
            for f in [
                NS,
                ns::DISCO_INFO,
                ns::DISCO_ITEMS,
                ns::PING,
                "http://jabber.org/protocol/muc#self-ping-optimization",
            ] {
                q = q.c(el("feature", ns::DISCO_INFO).a("var", f).build());
            }
            Some(iq_result(stanza, Some(q.build())))
        } else if payload.is("query", ns::DISCO_ITEMS) {
            let mut q = el("query", ns::DISCO_ITEMS);
            let rooms: Vec<Arc<Mutex<Room>>> = self
                .rooms
                .lock()
                .unwrap()
                .iter()
                .filter(|(j, _)| j.domain().as_str() == to.domain().as_str())
                .map(|(_, r)| r.clone())
                .collect();
            for r in rooms {
                let r = r.lock().unwrap();
                if r.config.public {
                    q = q.c(el("item", ns::DISCO_ITEMS)
                        .a("jid", r.jid.as_str())
                        .a("name", r.display_name())
                        .build());
                }
            }
            Some(iq_result(stanza, Some(q.build())))
        } else if payload.is("ping", ns::PING) {
            Some(iq_result(stanza, None))
        } else {
            error_reply(stanza, "service-unavailable", None)
        };
        if let Some(a) = answer
            && let Some(to) = a.attr("to").and_then(|t| FullJid::new(t).ok())
        {
            send(server, &to, &a);
        }
    }
}

/// `<x xmlns='…muc#user'>` with an item and status codes.
pub(crate) fn user_x(item: Element, codes: &[u16]) -> Element {
    let mut x = el("x", NS_USER).c(item);
    for c in codes {
        x = x.c(el("status", NS_USER).a("code", c.to_string()).build());
    }
    x.build()
}

/// Copy a stanza, addressed from `from` to `to`.
pub(crate) fn readdress(e: &Element, from: &str, to: &str) -> Element {
    let mut c = e.clone();
    c.set("from", from);
    c.set("to", to);
    c
}
