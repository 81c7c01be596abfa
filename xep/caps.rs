//! XEP-0115 entity capabilities, as the server needs them for PEP: which
//! `<node>+notify` features each session's client announced. A `ver` seen for
//! the first time is resolved by asking that client's disco#info, then cached
//! for every client that announces the same `ver`.

use crate::router::{SessionHandle, to_bytes};
use crate::server::Server;
use crate::xml::{BuilderExt, el, ns};
use minidom::Element;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

pub const NS: &str = "http://jabber.org/protocol/caps";
const MAX_CACHE: usize = 10_000;

#[derive(Default)]
pub struct CapsCache {
    features: Mutex<HashMap<String, Arc<HashSet<String>>>>,
    /// Our outstanding disco#info queries: IQ id → ver.
    pending: Mutex<HashMap<String, String>>,
}

impl CapsCache {
    pub fn features(&self, ver: &str) -> Option<Arc<HashSet<String>>> {
        self.features.lock().unwrap().get(ver).cloned()
    }
}

/// Note the caps of a presence from `h`; asks the client when the ver is new.
/// Returns `true` when the features are already known.
pub fn on_presence(server: &Server, h: &SessionHandle, p: &Element) -> bool {
    let Some(c) = p.get_child("c", NS) else {
        return false;
    };
    let (Some(node), Some(ver)) = (c.attr("node"), c.attr("ver")) else {
        return false;
    };
    *h.shared.caps.lock().unwrap() = Some(ver.to_string());
    if server.caps.features(ver).is_some() {
        return true;
    }
    let id = format!("caps-{}", crate::c2s::new_id());
    {
        let mut pending = server.caps.pending.lock().unwrap();
        if pending.values().any(|v| v == ver) || pending.len() >= MAX_CACHE {
            return false;
        }
        pending.insert(id.clone(), ver.to_string());
    }
    let q = el("iq", ns::CLIENT)
        .a("type", "get")
        .a("id", id.as_str())
        .a("from", h.jid.domain().as_str())
        .a("to", h.jid.as_str())
        .c(el("query", ns::DISCO_INFO)
            .a("node", format!("{node}#{ver}"))
            .build())
        .build();
    h.send(to_bytes(&q));
    false
}

/// An IQ answer addressed to the server: the reply to one of our caps queries?
/// Returns `true` when it was (and the features are now known).
pub fn on_result(server: &Server, iq: &Element) -> bool {
    let Some(id) = iq.attr("id") else {
        return false;
    };
    let Some(ver) = server.caps.pending.lock().unwrap().remove(id) else {
        return false;
    };
    let Some(q) = iq
        .get_child("query", ns::DISCO_INFO)
        .filter(|_| iq.attr("type") == Some("result"))
    else {
        return true;
    };
    let features: HashSet<String> = q
        .children()
        .filter(|f| f.is("feature", ns::DISCO_INFO))
        .filter_map(|f| f.attr("var").map(String::from))
        .collect();
    let mut cache = server.caps.features.lock().unwrap();
    if cache.len() >= MAX_CACHE {
        cache.clear();
    }
    cache.insert(ver, Arc::new(features));
    true
}

/// Does this session want notifications for `node` (`node+notify` in its caps)?
pub fn wants(server: &Server, h: &SessionHandle, node: &str) -> bool {
    let ver = h.shared.caps.lock().unwrap().clone();
    ver.and_then(|v| server.caps.features(&v))
        .is_some_and(|f| f.contains(&format!("{node}+notify")))
}
