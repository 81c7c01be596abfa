//! XEP-0115 entity capabilities, as the server needs them for PEP: which
//! `<node>+notify` features each session's client announced. A `ver` seen for
//! the first time is resolved by asking that client's disco#info. When the
//! answer hashes to the `ver` (§5.1, sha-1 or sha-256) it is cached for every
//! client that announces the same `ver`; otherwise (a legacy or unknown hash,
//! or a lie) it serves only the session that gave it, so one client cannot
//! poison what the server believes of others (§5.4).

use crate::router::{SessionHandle, to_bytes};
use crate::server::Server;
use crate::xml::{BuilderExt, el, ns};
use base64::Engine;
use jid::FullJid;
use minidom::Element;
use sha1::Digest;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

pub const NS: &str = "http://jabber.org/protocol/caps";
/// The namespace of `xml:lang`.
const XML_NS: &str = "http://www.w3.org/XML/1998/namespace";
const MAX_CACHE: usize = 10_000;

#[derive(Default)]
pub struct CapsCache {
    /// Verified `ver` → features.
    features: Mutex<HashMap<String, Arc<HashSet<String>>>>,
    /// Unverified answers, under `session_key`: kept apart so that filling
    /// this map cannot flush the verified one.
    unverified: Mutex<HashMap<String, Arc<HashSet<String>>>>,
    /// Our outstanding disco#info queries: IQ id → what was asked.
    pending: Mutex<HashMap<String, Pending>>,
}

struct Pending {
    ver: String,
    hash: Option<String>,
    jid: FullJid,
}

impl CapsCache {
    pub fn features(&self, key: &str) -> Option<Arc<HashSet<String>>> {
        if let Some(f) = self.features.lock().unwrap().get(key) {
            return Some(f.clone());
        }
        self.unverified.lock().unwrap().get(key).cloned()
    }

    fn put(&self, key: String, features: HashSet<String>, verified: bool) {
        let map = if verified {
            &self.features
        } else {
            &self.unverified
        };
        let mut cache = map.lock().unwrap();
        if cache.len() >= MAX_CACHE {
            cache.clear();
        }
        cache.insert(key, Arc::new(features));
    }
}

/// Where the features of an unverified `ver` are kept: this session only.
fn session_key(jid: &FullJid, ver: &str) -> String {
    format!("{jid} {ver}")
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
    for key in [ver.to_string(), session_key(&h.jid, ver)] {
        if server.caps.features(&key).is_some() {
            *h.shared.caps.lock().unwrap() = Some(key);
            return true;
        }
    }
    *h.shared.caps.lock().unwrap() = Some(ver.to_string());
    let id = format!("caps-{}", crate::c2s::new_id());
    {
        let mut pending = server.caps.pending.lock().unwrap();
        // One outstanding query per session: a newer ver replaces the older.
        pending.retain(|_, q| q.jid != h.jid);
        if pending.len() >= MAX_CACHE {
            return false;
        }
        pending.insert(
            id.clone(),
            Pending {
                ver: ver.to_string(),
                hash: c.attr("hash").map(str::to_ascii_lowercase),
                jid: h.jid.clone(),
            },
        );
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
    let Some(asked) = server.caps.pending.lock().unwrap().remove(id) else {
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
    let verified = asked
        .hash
        .as_deref()
        .and_then(|alg| verification_hash(q, alg))
        .is_some_and(|h| h == asked.ver);
    if verified {
        server.caps.put(asked.ver, features, true);
    } else {
        tracing::debug!(jid = %asked.jid, ver = asked.ver, "caps: ver does not verify; kept for this session only");
        let key = session_key(&asked.jid, &asked.ver);
        server.caps.put(key.clone(), features, false);
        if let Some(h) = server.registry.session(&asked.jid) {
            let mut caps = h.shared.caps.lock().unwrap();
            if caps.as_deref() == Some(asked.ver.as_str()) {
                *caps = Some(key);
            }
        }
    }
    true
}

/// A data form of a disco#info answer: FORM_TYPE, then (var, values) fields.
type Form = (String, Vec<(String, Vec<String>)>);

/// XEP-0115 §5.1: the `ver` a disco#info answer hashes to with `alg`
/// ("sha-1" or "sha-256"); `None` for other algorithms and for answers
/// §5.4 calls invalid (duplicate identities, features or form types).
pub fn verification_hash(query: &Element, alg: &str) -> Option<String> {
    let mut identities = Vec::new();
    let mut features = Vec::new();
    let mut forms: Vec<Form> = Vec::new();
    for c in query.children() {
        if c.is("identity", ns::DISCO_INFO) {
            identities.push(format!(
                "{}/{}/{}/{}",
                c.attr("category").unwrap_or_default(),
                c.attr("type").unwrap_or_default(),
                c.attr_ns(XML_NS, "lang").unwrap_or_default(),
                c.attr("name").unwrap_or_default()
            ));
        } else if c.is("feature", ns::DISCO_INFO) {
            features.push(c.attr("var").unwrap_or_default().to_string());
        } else if c.is("x", ns::DATA_FORMS) {
            let mut form_type = None;
            let mut fields = Vec::new();
            for f in c.children().filter(|f| f.is("field", ns::DATA_FORMS)) {
                let var = f.attr("var").unwrap_or_default().to_string();
                let mut values: Vec<String> = f
                    .children()
                    .filter(|v| v.is("value", ns::DATA_FORMS))
                    .map(|v| v.text())
                    .collect();
                if var == "FORM_TYPE" {
                    if f.attr("type") == Some("hidden") {
                        form_type = values.pop();
                    }
                } else {
                    values.sort();
                    fields.push((var, values));
                }
            }
            // A form without a hidden FORM_TYPE is ignored (§5.4).
            if let Some(t) = form_type {
                fields.sort();
                forms.push((t, fields));
            }
        }
    }
    // '<' is the separator of the hashed string: with it in a value, another
    // feature set hashes the same (the known preimage trick). Not verified.
    let has_sep = |v: &str| v.contains('<');
    if identities.iter().chain(&features).any(|v| has_sep(v))
        || forms.iter().any(|(t, fields)| {
            has_sep(t)
                || fields
                    .iter()
                    .any(|(var, vals)| has_sep(var) || vals.iter().any(|v| has_sep(v)))
        })
    {
        return None;
    }
    identities.sort();
    features.sort();
    forms.sort_by(|a, b| a.0.cmp(&b.0));
    let dup = |v: &[String]| v.windows(2).any(|w| w[0] == w[1]);
    if dup(&identities) || dup(&features) || forms.windows(2).any(|w| w[0].0 == w[1].0) {
        return None;
    }
    let mut s = String::new();
    for i in identities.iter().chain(&features) {
        s.push_str(i);
        s.push('<');
    }
    for (t, fields) in &forms {
        s.push_str(t);
        s.push('<');
        for (var, values) in fields {
            s.push_str(var);
            s.push('<');
            for v in values {
                s.push_str(v);
                s.push('<');
            }
        }
    }
    let digest = match alg {
        "sha-1" => sha1::Sha1::digest(s.as_bytes()).to_vec(),
        "sha-256" => sha2::Sha256::digest(s.as_bytes()).to_vec(),
        _ => return None,
    };
    Some(base64::engine::general_purpose::STANDARD.encode(digest))
}

/// Does this session want notifications for `node` (`node+notify` in its caps)?
pub fn wants(server: &Server, h: &SessionHandle, node: &str) -> bool {
    let ver = h.shared.caps.lock().unwrap().clone();
    ver.and_then(|v| server.caps.features(&v))
        .is_some_and(|f| f.contains(&format!("{node}+notify")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn complex_generation_example_of_the_xep() {
        // XEP-0115 §5.3 (identities in two languages, a software-info form).
        let xml = r#"<query xmlns='http://jabber.org/protocol/disco#info' node='http://psi-im.org#q8IKdGzQ9Um4n2xyDbuL6Gzq0Xc='>
<identity xml:lang='en' category='client' name='Psi 0.11' type='pc'/>
<identity xml:lang='el' category='client' name='Ψ 0.11' type='pc'/>
<feature var='http://jabber.org/protocol/caps'/>
<feature var='http://jabber.org/protocol/disco#info'/>
<feature var='http://jabber.org/protocol/disco#items'/>
<feature var='http://jabber.org/protocol/muc'/>
<x xmlns='jabber:x:data' type='result'>
<field var='FORM_TYPE' type='hidden'><value>urn:xmpp:dataforms:softwareinfo</value></field>
<field var='ip_version' type='text-multi'><value>ipv4</value><value>ipv6</value></field>
<field var='os'><value>Mac</value></field>
<field var='os_version'><value>10.5.1</value></field>
<field var='software'><value>Psi</value></field>
<field var='software_version'><value>0.11</value></field>
</x></query>"#;
        let q: Element = xml.parse().unwrap();
        assert_eq!(
            verification_hash(&q, "sha-1").as_deref(),
            Some("q07IKJEyjvHSyhy//CH0CxmKi8w=")
        );
    }

    #[test]
    fn separator_in_a_value_does_not_verify() {
        // One feature "a<b" hashes like the two features "a" and "b".
        let q: Element =
            "<query xmlns='http://jabber.org/protocol/disco#info'><feature var='a&lt;b'/></query>"
                .parse()
                .unwrap();
        assert_eq!(verification_hash(&q, "sha-1"), None);
    }

    #[test]
    fn duplicate_features_do_not_verify() {
        let q: Element = "<query xmlns='http://jabber.org/protocol/disco#info'><feature var='a'/><feature var='a'/></query>"
            .parse()
            .unwrap();
        assert_eq!(verification_hash(&q, "sha-1"), None);
    }
}
