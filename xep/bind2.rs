//! XEP-0386 Bind 2: resource binding inside the SASL2 exchange, with the
//! session features a client turns on at once (carbons, CSI, stream
//! management), so nothing can arrive between binding and enabling them.
//!
//! The server picks the resource: the client's `<tag/>` (its name) and a
//! suffix derived from its user-agent id, so one installation gets the same
//! resource each time and a new login replaces its own stale session.

use crate::server::Server;
use crate::xml::{BuilderExt, el};
use jid::BareJid;
use minidom::Element;
use sha2::Digest;

pub const NS: &str = "urn:xmpp:bind:0";

/// Longest tag kept in a resource.
const MAX_TAG: usize = 32;

/// The `<bind/>` inline feature of SASL2, listing what may be enabled with it.
pub fn feature(server: &Server) -> Element {
    let mut inline = el("inline", NS);
    let mut vars = vec![super::sm::NS, super::csi::NS];
    if server.modules.enabled("carbons") {
        vars.push(super::carbons::NS);
    }
    for v in vars {
        inline = inline.c(el("feature", NS).a("var", v).build());
    }
    el("bind", NS).c(inline.build()).build()
}

/// What a `<bind/>` request asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    pub tag: Option<String>,
    pub carbons: bool,
    pub inactive: bool,
    /// `<enable xmlns='urn:xmpp:sm:3'/>`: `Some(resume?)`.
    pub sm: Option<bool>,
}

impl Request {
    pub fn parse(e: &Element) -> Request {
        let mut r = Request::default();
        for c in e.children() {
            match (c.name(), c.ns().as_str()) {
                ("tag", NS) => r.tag = Some(c.text()),
                ("enable", super::carbons::NS) => r.carbons = true,
                ("inactive", super::csi::NS) => r.inactive = true,
                ("enable", super::sm::NS) => {
                    r.sm = Some(matches!(c.attr("resume"), Some("true") | Some("1")))
                }
                _ => {}
            }
        }
        r
    }
}

/// The resource for a Bind2 session: `tag.suffix`, the suffix stable per
/// (account, user-agent id) and random without an id.
pub fn resource(bare: &BareJid, tag: Option<&str>, agent: Option<&str>) -> String {
    let tag: String = tag
        .unwrap_or("")
        .chars()
        .filter(|c| !c.is_control() && !c.is_whitespace() && *c != '/')
        .take(MAX_TAG)
        .collect();
    let suffix = match agent {
        Some(id) => {
            let h = sha2::Sha256::digest(format!("{bare}\0{id}").as_bytes());
            h[..6].iter().map(|b| format!("{b:02x}")).collect()
        }
        None => crate::c2s::new_id(),
    };
    if tag.is_empty() {
        suffix
    } else {
        format!("{tag}.{suffix}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_is_stable_per_agent_and_keeps_the_tag() {
        let a: BareJid = "alice@localhost".parse().unwrap();
        let b: BareJid = "bob@localhost".parse().unwrap();
        let r1 = resource(&a, Some("Conversations"), Some("uuid-1"));
        assert!(r1.starts_with("Conversations."), "{r1}");
        assert_eq!(r1, resource(&a, Some("Conversations"), Some("uuid-1")));
        assert_ne!(r1, resource(&a, Some("Conversations"), Some("uuid-2")));
        assert_ne!(r1, resource(&b, Some("Conversations"), Some("uuid-1")));
        assert_ne!(resource(&a, None, None), resource(&a, None, None));
        assert!(!resource(&a, Some("a b/c\n"), None).contains([' ', '/', '\n']));
    }

    #[test]
    fn parses_inline_enables() {
        let e: Element = "<bind xmlns='urn:xmpp:bind:0'><tag>T</tag>\
            <enable xmlns='urn:xmpp:carbons:2'/><enable xmlns='urn:xmpp:sm:3' resume='true'/>\
            <inactive xmlns='urn:xmpp:csi:0'/></bind>"
            .parse()
            .unwrap();
        let r = Request::parse(&e);
        assert_eq!(
            r,
            Request {
                tag: Some("T".into()),
                carbons: true,
                inactive: true,
                sm: Some(true)
            }
        );
    }
}
