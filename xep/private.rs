//! XEP-0049 private XML storage, with XEP-0048 bookmarks kept in step with
//! XEP-0402 (`urn:xmpp:bookmarks:1#compat`): `storage:bookmarks` conferences
//! are served from, and written to, the PEP bookmarks node, so old and new
//! clients of one account see the same bookmarks.

use super::{IqRequest, Module, Target};
use crate::server::Server;
use crate::stanza::{error_reply, iq_result};
use crate::storage::{PepItem, PepNode};
use crate::xml::{BuilderExt, ElementExt, el};
use async_trait::async_trait;
use jid::BareJid;
use minidom::Element;
use std::sync::Arc;

pub const NS: &str = "jabber:iq:private";
const BOOKMARKS_OLD: &str = "storage:bookmarks";
const BOOKMARKS: &str = "urn:xmpp:bookmarks:1";
const BOOKMARKS_COMPAT: &str = "urn:xmpp:bookmarks:1#compat";

pub struct Private;

/// XEP-0402 items as a XEP-0048 `<storage/>` (other stored children kept).
async fn bookmarks_as_storage(
    server: &Server,
    owner: &BareJid,
    stored: Option<Element>,
) -> Element {
    let mut storage = el("storage", BOOKMARKS_OLD).build();
    if let Some(old) = &stored {
        for c in old.children().filter(|c| c.name() != "conference") {
            storage.append_child(c.clone());
        }
    }
    let items = server
        .storage
        .pep
        .pep_items(owner.as_str(), BOOKMARKS, &[], None)
        .await
        .unwrap_or_default();
    for it in items {
        let Ok(conf) = it.payload.parse::<Element>() else {
            continue;
        };
        let mut c = el("conference", BOOKMARKS_OLD).a("jid", it.item_id.as_str());
        if let Some(n) = conf.attr("name") {
            c = c.a("name", n);
        }
        if let Some(a) = conf.attr("autojoin") {
            c = c.a("autojoin", a);
        }
        for (child, _) in [("nick", ()), ("password", ())] {
            if let Some(v) = conf.get_child(child, BOOKMARKS) {
                c = c.c(el(child, BOOKMARKS_OLD).t(&v.text()).build());
            }
        }
        storage.append_child(c.build());
    }
    storage
}

/// Write XEP-0048 conferences into the XEP-0402 node (and drop the ones gone).
async fn storage_to_bookmarks(
    server: &Server,
    owner: &BareJid,
    storage: &Element,
) -> crate::storage::Result<()> {
    let pep = &server.storage.pep;
    let node = match pep.pep_node(owner.as_str(), BOOKMARKS).await? {
        Some(n) => n,
        None => {
            let n = PepNode {
                node: BOOKMARKS.into(),
                access_model: "whitelist".into(),
                max_items: 0,
                whitelist: Vec::new(),
            };
            pep.put_pep_node(owner.as_str(), &n).await?;
            n
        }
    };
    let mut wanted = Vec::new();
    for c in storage.children().filter(|c| c.name() == "conference") {
        let Some(jid) = c.attr("jid").and_then(|j| BareJid::new(j).ok()) else {
            continue;
        };
        let mut conf = el("conference", BOOKMARKS);
        if let Some(n) = c.attr("name") {
            conf = conf.a("name", n);
        }
        if let Some(a) = c.attr("autojoin") {
            conf = conf.a(
                "autojoin",
                if matches!(a, "true" | "1") {
                    "true"
                } else {
                    "false"
                },
            );
        }
        for child in ["nick", "password"] {
            if let Some(v) = c.children().find(|x| x.name() == child) {
                conf = conf.c(el(child, BOOKMARKS).t(&v.text()).build());
            }
        }
        let item = PepItem {
            item_id: jid.to_string(),
            payload: String::from_utf8(conf.build().to_bytes()).unwrap_or_default(),
            publisher: owner.to_string(),
        };
        pep.publish_pep_item(owner.as_str(), BOOKMARKS, &item, node.max_items)
            .await?;
        crate::xep::pep::notify(
            server,
            owner,
            &node,
            crate::xep::pep::items_element(BOOKMARKS, std::slice::from_ref(&item)),
        )
        .await;
        wanted.push(item.item_id);
    }
    for old in pep.pep_items(owner.as_str(), BOOKMARKS, &[], None).await? {
        if !wanted.contains(&old.item_id) {
            pep.retract_pep_item(owner.as_str(), BOOKMARKS, &old.item_id)
                .await?;
        }
    }
    Ok(())
}

#[async_trait]
impl Module for Private {
    fn name(&self) -> &'static str {
        "private"
    }
    fn namespaces(&self) -> &'static [&'static str] {
        &[NS]
    }
    fn features(&self, t: &Target) -> Vec<&'static str> {
        match t {
            Target::Account { .. } => vec![NS, BOOKMARKS_COMPAT],
            Target::Server(_) => vec![NS],
        }
    }
    async fn handle_iq(&self, server: &Arc<Server>, req: &IqRequest<'_>) -> Option<Element> {
        let owner = match req.target {
            Target::Account { jid, own: true } => jid.clone(),
            _ => return error_reply(req.iq, "forbidden", None),
        };
        let mut children = req.payload.children();
        let (Some(data), None) = (children.next(), children.next()) else {
            return error_reply(
                req.iq,
                "not-acceptable",
                Some("exactly one element per request"),
            );
        };
        let ns = data.ns();
        if matches!(ns.as_str(), "jabber:client" | "jabber:server" | NS) {
            return error_reply(req.iq, "not-acceptable", None);
        }
        let bridge = ns == BOOKMARKS_OLD && server.modules.enabled("pep");
        let store = &server.storage.private;
        match req.iq.attr("type") {
            Some("get") => {
                let stored = store
                    .private_xml(owner.as_str(), &ns)
                    .await
                    .ok()?
                    .and_then(|x| x.parse::<Element>().ok());
                let content = if bridge {
                    bookmarks_as_storage(server, &owner, stored).await
                } else {
                    stored.unwrap_or_else(|| Element::builder(data.name(), ns.as_str()).build())
                };
                Some(iq_result(req.iq, Some(el("query", NS).c(content).build())))
            }
            Some("set") => {
                let xml = String::from_utf8(data.to_bytes()).unwrap_or_default();
                if let Err(e) = store.set_private_xml(owner.as_str(), &ns, &xml).await {
                    tracing::error!(error = %e, "private storage failed");
                    return error_reply(req.iq, "internal-server-error", None);
                }
                if bridge && let Err(e) = storage_to_bookmarks(server, &owner, data).await {
                    tracing::error!(error = %e, "bookmarks sync failed");
                    return error_reply(req.iq, "internal-server-error", None);
                }
                Some(iq_result(req.iq, None))
            }
            _ => error_reply(req.iq, "bad-request", None),
        }
    }
}
