//! XEP-0163 Personal Eventing Protocol: a XEP-0060 pubsub service on every
//! account's bare JID. Nodes are created on first publish (publish-options
//! set their configuration and are checked as preconditions afterwards);
//! items persist; notifications go to the owner's resources and to contacts
//! allowed by the node's access model, filtered by XEP-0115 `+notify`.
//! Changes to the XEP-0084 avatar metadata node are mirrored into the vCard
//! (XEP-0398, in vcard.rs).

use super::{IqRequest, Module, Target, caps, vcard};
use crate::router::{SessionHandle, to_bytes};
use crate::server::Server;
use crate::stanza::{error_reply, iq_result};
use crate::storage::{PepItem, PepNode, RosterItem};
use crate::util::Bare;
use crate::xml::{BuilderExt, ElementExt, el, ns};
use async_trait::async_trait;
use jid::{BareJid, Jid};
use minidom::Element;
use std::sync::Arc;

pub const NS: &str = "http://jabber.org/protocol/pubsub";
pub const NS_OWNER: &str = "http://jabber.org/protocol/pubsub#owner";
pub const NS_EVENT: &str = "http://jabber.org/protocol/pubsub#event";
pub const NS_ERRORS: &str = "http://jabber.org/protocol/pubsub#errors";
const NODE_CONFIG: &str = "http://jabber.org/protocol/pubsub#node_config";

pub struct Pep;

fn default_node(node: &str) -> PepNode {
    PepNode {
        node: node.to_string(),
        access_model: "presence".into(),
        max_items: 1,
        whitelist: Vec::new(),
    }
}

/// An error with a pubsub-specific condition added (XEP-0060 §7).
fn pubsub_error(iq: &Element, condition: &str, specific: Option<&str>) -> Option<Element> {
    let mut r = error_reply(iq, condition, None)?;
    if let (Some(s), Some(e)) = (specific, r.get_child_mut("error", ns::CLIENT)) {
        e.append_child(el(s, NS_ERRORS).build());
    }
    Some(r)
}

/// Data form fields as (var, first value).
fn form_values(x: &Element) -> Vec<(String, String)> {
    x.children()
        .filter(|f| f.is("field", ns::DATA_FORMS))
        .map(|f| {
            let v = f
                .get_child("value", ns::DATA_FORMS)
                .map(|v| v.text())
                .unwrap_or_default();
            (f.attr("var").unwrap_or("").to_string(), v)
        })
        .collect()
}

/// Apply node configuration fields; unknown or invalid values are an error.
fn apply(node: &mut PepNode, fields: &[(String, String)]) -> Result<(), String> {
    for (var, v) in fields {
        match var.as_str() {
            "FORM_TYPE" => {}
            "pubsub#access_model" => {
                if !matches!(v.as_str(), "open" | "presence" | "roster" | "whitelist") {
                    return Err(format!("unsupported access model {v}"));
                }
                node.access_model = v.clone();
            }
            "pubsub#max_items" => {
                node.max_items = if v == "max" {
                    0
                } else {
                    v.parse::<i64>().map_err(|_| "bad max_items")?.max(1)
                };
            }
            "pubsub#persist_items"
            | "pubsub#send_last_published_item"
            | "pubsub#deliver_notifications"
            | "pubsub#deliver_payloads"
            | "pubsub#notify_retract"
            | "pubsub#notify_delete"
            | "pubsub#title"
            | "pubsub#type"
            | "pubsub#notify_sub" => {}
            other => return Err(format!("unsupported option {other}")),
        }
    }
    Ok(())
}

/// Publish-options are preconditions on an existing node (XEP-0060 §7.1.5).
fn satisfies(node: &PepNode, fields: &[(String, String)]) -> bool {
    fields.iter().all(|(var, v)| match var.as_str() {
        "pubsub#access_model" => &node.access_model == v,
        "pubsub#max_items" => {
            (v == "max" && node.max_items == 0) || v.parse::<i64>().ok() == Some(node.max_items)
        }
        _ => true,
    })
}

/// The access model's answer for `requester`, given the owner's roster row for it.
fn allowed(
    owner: &BareJid,
    node: &PepNode,
    requester: &BareJid,
    item: Option<&RosterItem>,
) -> bool {
    if owner == requester || node.access_model == "open" {
        return true;
    }
    match node.access_model.as_str() {
        "presence" => item.is_some_and(|i| i.subscription.has_from()),
        "roster" => item.is_some_and(|i| i.in_roster),
        _ => node.whitelist.iter().any(|w| w == requester.as_str()),
    }
}

/// May `requester` read `owner`'s node? (Blocked entities may not.)
async fn may_read(server: &Server, owner: &BareJid, node: &PepNode, requester: &BareJid) -> bool {
    if owner != requester
        && node.access_model != "open"
        && crate::xep::blocking::blocks(server, owner, &Jid::from(requester.clone())).await
    {
        return false;
    }
    let item = server
        .storage
        .roster
        .roster_item(owner.as_str(), requester.as_str())
        .await
        .ok()
        .flatten();
    allowed(owner, node, requester, item.as_ref())
}

fn event_message(owner: &BareJid, to: &str, content: Element) -> Element {
    el("message", ns::CLIENT)
        .a("from", owner.as_str())
        .a("to", to)
        .a("type", "headline")
        .a("id", crate::c2s::new_id())
        .c(el("event", NS_EVENT).c(content).build())
        .build()
}

pub(crate) fn items_element(node: &str, items: &[PepItem]) -> Element {
    let mut b = el("items", NS_EVENT).a("node", node);
    for it in items {
        let mut i = el("item", NS_EVENT)
            .a("id", it.item_id.as_str())
            .a("publisher", it.publisher.as_str());
        if let Ok(p) = it.payload.parse::<Element>() {
            i = i.c(p);
        }
        b = b.c(i.build());
    }
    b.build()
}

/// Send an event to every interested session allowed to see `node`.
pub(crate) async fn notify(server: &Server, owner: &BareJid, node: &PepNode, content: Element) {
    // The owner, and contacts from the roster (loaded once) or the whitelist,
    // each with the roster row the access check needs.
    let (_, roster) = server
        .storage
        .roster
        .roster(owner.as_str())
        .await
        .unwrap_or_default();
    let mut recipients: Vec<(BareJid, Option<&RosterItem>)> = vec![(owner.clone(), None)];
    if node.access_model != "whitelist" {
        recipients.extend(
            roster
                .iter()
                .filter(|i| i.subscription.has_from())
                .filter_map(|i| BareJid::new(&i.contact).ok().map(|j| (j, Some(i)))),
        );
    } else {
        recipients.extend(
            node.whitelist
                .iter()
                .filter_map(|w| BareJid::new(w).ok().map(|j| (j, None))),
        );
    }
    for (r, item) in recipients {
        if !server.config.serves(r.domain().as_str())
            || !allowed(owner, node, &r, item)
            || (r != *owner
                && node.access_model != "open"
                && crate::xep::blocking::blocks(server, owner, &Jid::from(r.clone())).await)
        {
            continue;
        }
        for (h, _) in server.registry.available_priorities(&r) {
            if caps::wants(server, &h, &node.node) {
                h.send(to_bytes(&event_message(
                    owner,
                    h.jid.as_str(),
                    content.clone(),
                )));
            }
        }
    }
}

/// Publish an item as the owner, creating the node with the defaults when new,
/// and notify: for items the server writes on the owner's behalf (XEP-0398).
pub(crate) async fn publish_item(
    server: &Server,
    owner: &BareJid,
    node_name: &str,
    item: PepItem,
) -> crate::storage::Result<()> {
    let store = &server.storage.pep;
    let node = match store.pep_node(owner.as_str(), node_name).await? {
        Some(n) => n,
        None => {
            let n = default_node(node_name);
            store.put_pep_node(owner.as_str(), &n).await?;
            n
        }
    };
    store
        .publish_pep_item(owner.as_str(), node_name, &item, node.max_items)
        .await?;
    notify(
        server,
        owner,
        &node,
        items_element(node_name, std::slice::from_ref(&item)),
    )
    .await;
    Ok(())
}

/// XEP-0163 §6: a session that just came online (or whose caps became known)
/// gets the last item of every node it wants, from itself and its contacts.
pub async fn send_last_items(server: &Server, h: &SessionHandle) {
    if !server.modules.enabled("pep") {
        return;
    }
    let me = h.jid.bare();
    let mut owners = vec![me.clone()];
    if let Ok((_, roster)) = server.storage.roster.roster(me.as_str()).await {
        owners.extend(
            roster
                .iter()
                .filter(|i| i.subscription.has_to())
                .filter_map(|i| BareJid::new(&i.contact).ok()),
        );
    }
    for owner in owners {
        if !server.config.serves(owner.domain().as_str()) {
            continue;
        }
        let Ok(nodes) = server.storage.pep.pep_nodes(owner.as_str()).await else {
            continue;
        };
        for node in nodes {
            if !caps::wants(server, h, &node.node) || !may_read(server, &owner, &node, &me).await {
                continue;
            }
            if let Ok(items) = server
                .storage
                .pep
                .pep_items(owner.as_str(), &node.node, &[], Some(1))
                .await
                && !items.is_empty()
            {
                h.send(to_bytes(&event_message(
                    &owner,
                    h.jid.as_str(),
                    items_element(&node.node, &items),
                )));
            }
        }
    }
}

impl Pep {
    async fn publish(
        &self,
        server: &Server,
        req: &IqRequest<'_>,
        owner: &BareJid,
        publish: &Element,
    ) -> Option<Element> {
        let iq = req.iq;
        let Some(node_name) = publish.attr("node").filter(|n| !n.is_empty()) else {
            return pubsub_error(iq, "bad-request", Some("nodeid-required"));
        };
        let items: Vec<&Element> = publish.children().filter(|c| c.is("item", NS)).collect();
        if items.len() > 1 {
            return pubsub_error(iq, "bad-request", Some("invalid-payload"));
        }
        let item = items.first();
        let payload = item.and_then(|i| i.children().next());
        let Some(payload) = payload else {
            return pubsub_error(iq, "bad-request", Some("item-required"));
        };
        if item.and_then(|i| i.children().nth(1)).is_some() {
            return pubsub_error(iq, "bad-request", Some("invalid-payload"));
        }
        let options = req
            .payload
            .get_child("publish-options", NS)
            .and_then(|o| o.get_child("x", ns::DATA_FORMS))
            .map(form_values)
            .unwrap_or_default();
        let store = &server.storage.pep;
        let node = match store.pep_node(owner.as_str(), node_name).await.ok()? {
            Some(n) => {
                if !satisfies(&n, &options) {
                    return pubsub_error(iq, "conflict", Some("precondition-not-met"));
                }
                n
            }
            None => {
                let mut n = default_node(node_name);
                if apply(&mut n, &options).is_err() {
                    return pubsub_error(iq, "conflict", Some("precondition-not-met"));
                }
                store.put_pep_node(owner.as_str(), &n).await.ok()?;
                n
            }
        };
        let item_id = item
            .and_then(|i| i.attr("id"))
            .map(String::from)
            .unwrap_or_else(crate::c2s::new_id);
        let stored = PepItem {
            item_id: item_id.clone(),
            payload: String::from_utf8(payload.to_bytes()).unwrap_or_default(),
            publisher: owner.to_string(),
        };
        if let Err(e) = store
            .publish_pep_item(owner.as_str(), node_name, &stored, node.max_items)
            .await
        {
            tracing::error!(error = %e, "PEP publish failed");
            return error_reply(iq, "internal-server-error", None);
        }
        notify(
            server,
            owner,
            &node,
            items_element(node_name, std::slice::from_ref(&stored)),
        )
        .await;
        if node_name == vcard::AVATAR_METADATA {
            vcard::pep_to_vcard(server, owner).await;
        }
        let answer = el("pubsub", NS)
            .c(el("publish", NS)
                .a("node", node_name)
                .c(el("item", NS).a("id", item_id.as_str()).build())
                .build())
            .build();
        Some(iq_result(iq, Some(answer)))
    }

    async fn items(
        &self,
        server: &Server,
        req: &IqRequest<'_>,
        owner: &BareJid,
        items: &Element,
    ) -> Option<Element> {
        let iq = req.iq;
        let node = match named_node(server, iq, owner, items).await {
            Ok(n) => n,
            Err(reply) => return reply,
        };
        let node_name = node.node.clone();
        let node_name = node_name.as_str();
        let requester = req.from.bare();
        if !may_read(server, owner, &node, &requester).await {
            // XEP-0060 §6.5.9.6-8: subscription and roster models are
            // not-authorized (auth); a whitelist is not-allowed (cancel).
            let (condition, specific) = match node.access_model.as_str() {
                "presence" => ("not-authorized", "presence-subscription-required"),
                "roster" => ("not-authorized", "not-in-roster-group"),
                _ => ("not-allowed", "closed-node"),
            };
            return pubsub_error(iq, condition, Some(specific));
        }
        let ids: Vec<String> = items
            .children()
            .filter(|c| c.is("item", NS))
            .filter_map(|c| c.attr("id").map(String::from))
            .collect();
        let max = items.attr("max_items").and_then(|m| m.parse().ok());
        let found = server
            .storage
            .pep
            .pep_items(owner.as_str(), node_name, &ids, max)
            .await
            .ok()?;
        let mut b = el("items", NS).a("node", node_name);
        for it in found {
            let mut i = el("item", NS).a("id", it.item_id.as_str());
            if let Ok(p) = it.payload.parse::<Element>() {
                i = i.c(p);
            }
            b = b.c(i.build());
        }
        Some(iq_result(iq, Some(el("pubsub", NS).c(b.build()).build())))
    }

    async fn retract(
        &self,
        server: &Server,
        req: &IqRequest<'_>,
        owner: &BareJid,
        r: &Element,
    ) -> Option<Element> {
        let iq = req.iq;
        let node = match named_node(server, iq, owner, r).await {
            Ok(n) => n,
            Err(reply) => return reply,
        };
        let node_name = node.node.clone();
        let node_name = node_name.as_str();
        let Some(id) = r.get_child("item", NS).and_then(|i| i.attr("id")) else {
            return pubsub_error(iq, "bad-request", Some("item-required"));
        };
        if !server
            .storage
            .pep
            .retract_pep_item(owner.as_str(), node_name, id)
            .await
            .ok()?
        {
            return error_reply(iq, "item-not-found", None);
        }
        if matches!(r.attr("notify"), Some("true" | "1")) {
            let content = el("items", NS_EVENT)
                .a("node", node_name)
                .c(el("retract", NS_EVENT).a("id", id).build())
                .build();
            notify(server, owner, &node, content).await;
        }
        if node_name == vcard::AVATAR_METADATA {
            vcard::pep_to_vcard(server, owner).await;
        }
        Some(iq_result(iq, None))
    }

    async fn owner(
        &self,
        server: &Server,
        req: &IqRequest<'_>,
        owner: &BareJid,
    ) -> Option<Element> {
        let iq = req.iq;
        let q = req.payload;
        let action = q.children().next()?;
        let store = &server.storage.pep;
        let mut node = match named_node(server, iq, owner, action).await {
            Ok(n) => n,
            Err(reply) => return reply,
        };
        let node_name = node.node.clone();
        let node_name = node_name.as_str();
        match (action.name(), iq.attr("type")) {
            ("configure", Some("get")) => {
                let f = |var: &str, v: &str| {
                    el("field", ns::DATA_FORMS)
                        .a("var", var)
                        .c(el("value", ns::DATA_FORMS).t(v).build())
                        .build()
                };
                let max = if node.max_items == 0 {
                    "max".to_string()
                } else {
                    node.max_items.to_string()
                };
                let form = el("x", ns::DATA_FORMS)
                    .a("type", "form")
                    .c(el("field", ns::DATA_FORMS)
                        .a("var", "FORM_TYPE")
                        .a("type", "hidden")
                        .c(el("value", ns::DATA_FORMS).t(NODE_CONFIG).build())
                        .build())
                    .c(f("pubsub#access_model", &node.access_model))
                    .c(f("pubsub#max_items", &max))
                    .c(f("pubsub#persist_items", "1"))
                    .build();
                let answer = el("pubsub", NS_OWNER)
                    .c(el("configure", NS_OWNER)
                        .a("node", node_name)
                        .c(form)
                        .build())
                    .build();
                Some(iq_result(iq, Some(answer)))
            }
            ("configure", Some("set")) => {
                let fields = action
                    .get_child("x", ns::DATA_FORMS)
                    .map(form_values)
                    .unwrap_or_default();
                if let Err(e) = apply(&mut node, &fields) {
                    return error_reply(iq, "not-acceptable", Some(&e));
                }
                store.put_pep_node(owner.as_str(), &node).await.ok()?;
                Some(iq_result(iq, None))
            }
            ("delete", Some("set")) => {
                store
                    .delete_pep_node(owner.as_str(), node_name)
                    .await
                    .ok()?;
                notify(
                    server,
                    owner,
                    &node,
                    el("delete", NS_EVENT).a("node", node_name).build(),
                )
                .await;
                if node_name == vcard::AVATAR_METADATA {
                    vcard::pep_to_vcard(server, owner).await;
                }
                Some(iq_result(iq, None))
            }
            _ => error_reply(iq, "feature-not-implemented", None),
        }
    }
}

/// The existing node an action names, or the reply when it names none or an unknown one.
async fn named_node(
    server: &Server,
    iq: &Element,
    owner: &BareJid,
    action: &Element,
) -> Result<PepNode, Option<Element>> {
    let Some(name) = action.attr("node") else {
        return Err(pubsub_error(iq, "bad-request", Some("nodeid-required")));
    };
    match server.storage.pep.pep_node(owner.as_str(), name).await {
        Ok(Some(n)) => Ok(n),
        Ok(None) => Err(error_reply(iq, "item-not-found", None)),
        Err(e) => {
            tracing::error!(error = %e, "loading a PEP node failed");
            Err(error_reply(iq, "internal-server-error", None))
        }
    }
}

/// Features of PEP on an account (XEP-0163 §9, XEP-0060 §10).
const FEATURES: &[&str] = &[
    NS,
    "http://jabber.org/protocol/pubsub#publish",
    "http://jabber.org/protocol/pubsub#publish-options",
    "http://jabber.org/protocol/pubsub#auto-create",
    "http://jabber.org/protocol/pubsub#retrieve-items",
    "http://jabber.org/protocol/pubsub#retract-items",
    "http://jabber.org/protocol/pubsub#delete-nodes",
    "http://jabber.org/protocol/pubsub#config-node",
    "http://jabber.org/protocol/pubsub#persistent-items",
    "http://jabber.org/protocol/pubsub#last-published",
    "http://jabber.org/protocol/pubsub#item-ids",
    "http://jabber.org/protocol/pubsub#access-open",
    "http://jabber.org/protocol/pubsub#access-presence",
    "http://jabber.org/protocol/pubsub#access-roster",
    "http://jabber.org/protocol/pubsub#access-whitelist",
    "http://jabber.org/protocol/pubsub#multi-items",
];

#[async_trait]
impl Module for Pep {
    fn name(&self) -> &'static str {
        "pep"
    }
    fn namespaces(&self) -> &'static [&'static str] {
        &[NS, NS_OWNER]
    }
    fn features(&self, t: &Target) -> Vec<&'static str> {
        match t {
            Target::Account { .. } => FEATURES.to_vec(),
            Target::Server(_) => vec![],
        }
    }
    async fn handle_iq(&self, server: &Arc<Server>, req: &IqRequest<'_>) -> Option<Element> {
        let (owner, own) = match req.target {
            Target::Account { jid, own } => (jid.clone(), *own),
            Target::Server(_) => return error_reply(req.iq, "feature-not-implemented", None),
        };
        let kind = req.iq.attr("type");
        if req.payload.ns() == NS_OWNER {
            if !own {
                return error_reply(req.iq, "forbidden", None);
            }
            return self.owner(server, req, &owner).await;
        }
        let action = req
            .payload
            .children()
            .find(|c| c.name() != "publish-options")?;
        match (action.name(), kind) {
            ("publish", Some("set")) if own => self.publish(server, req, &owner, action).await,
            ("retract", Some("set")) if own => self.retract(server, req, &owner, action).await,
            ("publish" | "retract", Some("set")) => error_reply(req.iq, "forbidden", None),
            ("items", Some("get")) => self.items(server, req, &owner, action).await,
            _ => error_reply(req.iq, "feature-not-implemented", None),
        }
    }
}
