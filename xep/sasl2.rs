//! XEP-0388 Extensible SASL Profile ("SASL2"): authentication in one
//! exchange that also carries what a client wants right after it — resource
//! binding (XEP-0386 Bind2), stream resumption (XEP-0198) and token requests
//! (XEP-0484 FAST) — and needs no stream restart.
//!
//! This file holds the wire format; the state machine lives with the classic
//! SASL one in c2s/mod.rs, which shares the mechanisms.

use crate::sasl::SaslFailure;
use crate::xml::{BuilderExt, el, ns};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use minidom::Element;

pub const NS: &str = "urn:xmpp:sasl:2";

/// Longest user-agent id we keep (XEP-0388 asks for a UUID; be lenient).
const MAX_AGENT_ID: usize = 128;

/// `<authentication/>` stream feature: mechanisms plus what may be inlined.
pub fn feature(mechanisms: &[&str], inline: Vec<Element>) -> Element {
    let mut f = el("authentication", NS);
    for m in mechanisms {
        f = f.c(el("mechanism", NS).t(m).build());
    }
    if !inline.is_empty() {
        let mut i = el("inline", NS);
        for e in inline {
            i = i.c(e);
        }
        f = f.c(i.build());
    }
    f.build()
}

/// The client's `<user-agent/>`: `id` identifies one installation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserAgent {
    pub id: Option<String>,
    pub software: Option<String>,
    pub device: Option<String>,
}

/// Use of a FAST token (`<fast xmlns='urn:xmpp:fast:0'/>` in the request).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FastUse {
    /// Replay counter, strictly increasing per token when present.
    pub count: Option<i64>,
    /// Log out: the token ends with this login.
    pub invalidate: bool,
}

/// A parsed `<authenticate/>`.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub mechanism: String,
    /// Decoded `<initial-response/>`: `None` absent, empty for `=`.
    pub initial_response: Option<Vec<u8>>,
    pub user_agent: UserAgent,
    /// The XEP-0386 `<bind/>` request, if any.
    pub bind: Option<Element>,
    /// XEP-0198 `<resume/>`: (previd, h).
    pub resume: Option<(String, u32)>,
    /// XEP-0484 `<request-token mechanism/>`.
    pub request_token: Option<String>,
    pub fast: Option<FastUse>,
    /// Set by the server: the FAST token this request logged in with.
    pub used_token: Option<String>,
}

impl Request {
    pub fn parse(e: &Element) -> Result<Request, SaslFailure> {
        let mechanism = e
            .attr("mechanism")
            .filter(|m| !m.is_empty())
            .ok_or(SaslFailure::InvalidMechanism)?
            .to_string();
        let mut r = Request {
            mechanism,
            ..Request::default()
        };
        for c in e.children() {
            match (c.name(), c.ns().as_str()) {
                ("initial-response", NS) => r.initial_response = Some(decode(&c.text())?),
                ("user-agent", NS) => {
                    let text = |n: &str| c.get_child(n, NS).map(|x| x.text());
                    r.user_agent = UserAgent {
                        id: c
                            .attr("id")
                            .filter(|i| !i.is_empty() && i.len() <= MAX_AGENT_ID)
                            .map(str::to_string),
                        software: text("software"),
                        device: text("device"),
                    };
                }
                ("bind", super::bind2::NS) => r.bind = Some(c.clone()),
                ("resume", super::sm::NS) => {
                    let previd = c.attr("previd").ok_or(SaslFailure::MalformedRequest)?;
                    let h = super::sm::parse_h(c).ok_or(SaslFailure::MalformedRequest)?;
                    r.resume = Some((previd.to_string(), h));
                }
                ("request-token", super::fast::NS) => {
                    r.request_token = c.attr("mechanism").map(str::to_string)
                }
                ("fast", super::fast::NS) => {
                    r.fast = Some(FastUse {
                        count: c.attr("count").and_then(|n| n.parse().ok()),
                        invalidate: matches!(c.attr("invalidate"), Some("true") | Some("1")),
                    })
                }
                _ => {}
            }
        }
        Ok(r)
    }
}

/// SASL data: base64, with `=` meaning empty.
fn decode(t: &str) -> Result<Vec<u8>, SaslFailure> {
    let t = t.trim();
    if t.is_empty() || t == "=" {
        return Ok(Vec::new());
    }
    B64.decode(t).map_err(|_| SaslFailure::IncorrectEncoding)
}

pub fn challenge(data: &[u8]) -> Vec<u8> {
    format!("<challenge xmlns='{NS}'>{}</challenge>", B64.encode(data)).into_bytes()
}

/// `<failure/>`: the RFC 6120 condition, then optional human text.
pub fn failure(f: SaslFailure, text: Option<&str>) -> Vec<u8> {
    let mut e = el("failure", NS).c(el(f.condition(), ns::SASL).build());
    if let Some(t) = text {
        e = e.c(el("text", NS).t(t).build());
    }
    crate::xml::ElementExt::to_bytes(&e.build())
}

/// What goes into `<success/>` besides the identity and per-feature results.
#[derive(Debug, Clone, Default)]
pub struct Success {
    /// The mechanism's final server message (SCRAM `v=`, HT responder).
    pub additional_data: Option<Vec<u8>>,
    /// Elements for the client whatever happens next (e.g. a FAST `<token/>`).
    pub extra: Vec<Element>,
}

impl Success {
    /// `authz` is the bare JID, or the full JID once bound or resumed.
    pub fn to_element(&self, authz: &str, results: Vec<Element>) -> Element {
        let mut e = el("success", NS);
        if let Some(d) = &self.additional_data {
            e = e.c(el("additional-data", NS).t(&B64.encode(d)).build());
        }
        e = e.c(el("authorization-identifier", NS).t(authz).build());
        for r in results.into_iter().chain(self.extra.iter().cloned()) {
            e = e.c(r);
        }
        e.build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_request() {
        let xml = format!(
            "<authenticate xmlns='{NS}' mechanism='SCRAM-SHA-1'>\
             <initial-response>biwsbj1hbGljZSxyPTEyMw==</initial-response>\
             <user-agent id='d4565fa7-4d72-4749-b3d3-740edbf87770'><software>T</software></user-agent>\
             <bind xmlns='urn:xmpp:bind:0'><tag>T</tag></bind>\
             <resume xmlns='urn:xmpp:sm:3' previd='abc' h='7'/>\
             <request-token xmlns='urn:xmpp:fast:0' mechanism='HT-SHA-256-NONE'/>\
             </authenticate>"
        );
        let e: Element = xml.parse().unwrap();
        let r = Request::parse(&e).unwrap();
        assert_eq!(r.mechanism, "SCRAM-SHA-1");
        assert_eq!(
            r.initial_response.as_deref(),
            Some(&b"n,,n=alice,r=123"[..])
        );
        assert_eq!(
            r.user_agent.id.as_deref(),
            Some("d4565fa7-4d72-4749-b3d3-740edbf87770")
        );
        assert_eq!(r.user_agent.software.as_deref(), Some("T"));
        assert!(r.bind.is_some());
        assert_eq!(r.resume, Some(("abc".into(), 7)));
        assert_eq!(r.request_token.as_deref(), Some("HT-SHA-256-NONE"));
        let bad: Element = format!("<authenticate xmlns='{NS}'/>").parse().unwrap();
        assert!(Request::parse(&bad).is_err());
    }
}
