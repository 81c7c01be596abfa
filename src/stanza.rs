//! Stanza-level helpers: kinds, error replies (RFC 6120 §8.3) and IQ results.

use crate::xml::{BuilderExt, ElementExt, el, ns};
use minidom::Element;

/// RFC 6120 §8.3.2 error types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorType {
    Auth,
    Cancel,
    Continue,
    Modify,
    Wait,
}

impl ErrorType {
    fn as_str(self) -> &'static str {
        match self {
            ErrorType::Auth => "auth",
            ErrorType::Cancel => "cancel",
            ErrorType::Continue => "continue",
            ErrorType::Modify => "modify",
            ErrorType::Wait => "wait",
        }
    }
}

/// The error type RFC 6120 §8.3.3 pairs with each condition.
pub fn default_type(condition: &str) -> ErrorType {
    match condition {
        "bad-request" | "jid-malformed" | "not-acceptable" | "policy-violation" | "redirect"
        | "gone" => ErrorType::Modify,
        "forbidden" | "not-authorized" | "registration-required" | "subscription-required" => {
            ErrorType::Auth
        }
        "resource-constraint" | "remote-server-timeout" | "unexpected-request" => ErrorType::Wait,
        _ => ErrorType::Cancel,
    }
}

pub fn error_element(condition: &str, text: Option<&str>) -> Element {
    let mut b = el("error", ns::CLIENT)
        .a("type", default_type(condition).as_str())
        .c(el(condition, ns::STANZA_ERRORS).build());
    if let Some(t) = text {
        b = b.c(el("text", ns::STANZA_ERRORS).t(t).build());
    }
    b.build()
}

/// Turn a stanza into its error reply: swap addresses, keep the payload,
/// add the error. Returns `None` for errors (never answer an error).
pub fn error_reply(stanza: &Element, condition: &str, text: Option<&str>) -> Option<Element> {
    if stanza.attr("type") == Some("error") {
        return None;
    }
    let mut reply = Element::builder(stanza.name(), ns::CLIENT).build();
    if let Some(id) = stanza.attr("id") {
        reply.set("id", id);
    }
    if let Some(from) = stanza.attr("from") {
        reply.set("to", from);
    }
    if let Some(to) = stanza.attr("to") {
        reply.set("from", to);
    }
    reply.set("type", "error");
    // IQ errors may omit the payload; messages keep it for context.
    if stanza.name() != "iq" {
        for child in stanza.children() {
            if child.name() != "error" {
                reply.append_child(child.clone());
            }
        }
    } else if let Some(child) = stanza.first_child() {
        reply.append_child(child.clone());
    }
    reply.append_child(error_element(condition, text));
    Some(reply)
}

/// An empty IQ result (or one carrying `payload`) answering `iq`.
pub fn iq_result(iq: &Element, payload: Option<Element>) -> Element {
    let mut b = el("iq", ns::CLIENT).a("type", "result");
    if let Some(id) = iq.attr("id") {
        b = b.a("id", id);
    }
    if let Some(from) = iq.attr("from") {
        b = b.a("to", from);
    }
    if let Some(to) = iq.attr("to") {
        b = b.a("from", to);
    }
    if let Some(p) = payload {
        b = b.c(p);
    }
    b.build()
}

/// The stanza kinds of RFC 6120 §8.
pub fn is_stanza(el: &Element) -> bool {
    el.has_ns(ns::CLIENT) && matches!(el.name(), "message" | "presence" | "iq")
}

/// `<stream:error>` followed by the stream close.
pub fn stream_error_bytes(condition: &str, text: Option<&str>) -> Vec<u8> {
    let mut s = format!("<stream:error><{condition} xmlns='{}'/>", ns::STREAM_ERRORS);
    if let Some(t) = text {
        s.push_str(&format!(
            "<text xmlns='{}' xml:lang='en'>{}</text>",
            ns::STREAM_ERRORS,
            crate::xml::escape(t)
        ));
    }
    s.push_str("</stream:error></stream:stream>");
    s.into_bytes()
}
