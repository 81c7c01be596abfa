//! XML for XMPP: namespaces, an incremental stream parser with limits, and
//! small helpers over `minidom::Element`.

pub mod ns;
mod parser;
mod write;

pub use parser::{StreamEvent, StreamHeader, StreamParser, XmlError, is_stream_root};

use minidom::{Element, ElementBuilder, IntoAttributeValue};
use rxml::{Namespace, NcName};

/// A static attribute or element name as rxml wants it. Panics only on a
/// programming error (a literal that is not an NCName).
pub fn nc(s: &str) -> NcName {
    NcName::try_from(s).expect("valid NCName literal")
}

/// Start building an element.
pub fn el(name: &str, ns: &str) -> ElementBuilder {
    Element::builder(name, ns)
}

/// Ergonomic attribute setting on builders.
pub trait BuilderExt {
    fn a<V: IntoAttributeValue>(self, name: &str, value: V) -> Self;
    fn c(self, child: Element) -> Self;
    fn t(self, text: &str) -> Self;
}

impl BuilderExt for ElementBuilder {
    fn a<V: IntoAttributeValue>(self, name: &str, value: V) -> Self {
        self.attr(nc(name), value)
    }
    fn c(self, child: Element) -> Self {
        self.append(child)
    }
    fn t(self, text: &str) -> Self {
        self.append(text)
    }
}

/// Helpers on elements we receive and forward.
pub trait ElementExt {
    fn set(&mut self, name: &str, value: &str);
    fn unset(&mut self, name: &str);
    fn first_child(&self) -> Option<&Element>;
    fn to_bytes(&self) -> Vec<u8>;
}

impl ElementExt for Element {
    fn set(&mut self, name: &str, value: &str) {
        self.attrs_mut()
            .insert(Namespace::NONE, nc(name), value.to_string());
    }
    fn unset(&mut self, name: &str) {
        self.attrs_mut().remove(&Namespace::NONE, name);
    }
    fn first_child(&self) -> Option<&Element> {
        self.children().next()
    }
    fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        write::write_element(self, &mut out);
        out
    }
}

/// Escape text for use in XML character data or attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\'' => out.push_str("&apos;"),
            '"' => out.push_str("&quot;"),
            _ => out.push(c),
        }
    }
    out
}
