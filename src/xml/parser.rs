//! Sans-IO parser for a never-ending XMPP stream.
//!
//! rxml does the XML work (well-formedness, namespaces, and refusing DTDs,
//! entities, PIs and comments); this layer turns its events into the stream
//! header, one `Element` per top-level stanza, and the stream close, and
//! enforces the limits: bytes per stanza (counted on the wire, so an endless
//! start tag or text is caught even before rxml emits anything) and nesting
//! depth (building and dropping trees is recursive).

use crate::xml::ns;
use minidom::Element;
use rxml::{Event, Parse, WithOptions};

#[derive(Debug, Clone, Default)]
pub struct StreamHeader {
    pub to: Option<String>,
    pub from: Option<String>,
    pub version: Option<String>,
    pub lang: Option<String>,
    pub id: Option<String>,
    /// Namespace of the root element; must be the streams namespace.
    pub ns: String,
    pub name: String,
    /// Every attribute of the root as (namespace, name, value), for roots
    /// that carry more than a stream header (a BOSH `<body/>`).
    pub attrs: Vec<(String, String, String)>,
}

#[derive(Debug)]
pub enum StreamEvent {
    Header(StreamHeader),
    Stanza(Element),
    Close,
}

/// What went wrong, mapped to the RFC 6120 §4.9.3 stream error condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum XmlError {
    NotWellFormed(String),
    RestrictedXml(String),
    PolicyViolation(String),
    BadFormat(String),
}

impl XmlError {
    pub fn condition(&self) -> &'static str {
        match self {
            XmlError::NotWellFormed(_) => "not-well-formed",
            XmlError::RestrictedXml(_) => "restricted-xml",
            XmlError::PolicyViolation(_) => "policy-violation",
            XmlError::BadFormat(_) => "bad-format",
        }
    }
    pub fn text(&self) -> &str {
        match self {
            XmlError::NotWellFormed(t)
            | XmlError::RestrictedXml(t)
            | XmlError::PolicyViolation(t)
            | XmlError::BadFormat(t) => t,
        }
    }
}

pub struct StreamParser {
    parser: rxml::Parser,
    /// Elements under construction: [0] is the stanza, last is the innermost.
    stack: Vec<Element>,
    /// Depth including the stream root (1 = inside <stream:stream>).
    depth: usize,
    /// Wire bytes consumed since the last stanza boundary.
    pending_bytes: usize,
    max_stanza_bytes: usize,
    max_depth: usize,
    failed: Option<XmlError>,
}

impl StreamParser {
    pub fn new(max_stanza_bytes: usize, max_depth: usize) -> Self {
        // A single name, attribute value or text chunk larger than this is an error.
        let opts = rxml::Options {
            max_token_length: max_stanza_bytes.min(64 * 1024),
            ..Default::default()
        };
        StreamParser {
            parser: rxml::Parser::with_options(opts),
            stack: Vec::new(),
            depth: 0,
            pending_bytes: 0,
            max_stanza_bytes,
            max_depth,
            failed: None,
        }
    }

    /// Feed bytes read from the socket; complete events are pushed to `out`.
    /// After an error every further call returns the same error.
    pub fn feed(&mut self, mut data: &[u8], out: &mut Vec<StreamEvent>) -> Result<(), XmlError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let chunk = data;
        let mut r = self.feed_inner(&mut data, out);
        if let Err(XmlError::NotWellFormed(_)) = &r
            && (contains(chunk, b"<!DOCTYPE") || contains(chunk, b"<!ENTITY"))
        {
            // rxml reports a DTD as a syntax error; RFC 6120 §11.1 names it restricted XML.
            r = Err(XmlError::RestrictedXml("DTDs are not allowed".into()));
        }
        if let Err(e) = &r {
            self.failed = Some(e.clone());
            self.stack.clear();
        } else if self.stack.is_empty() {
            // Between stanzas: give back rxml's token scratchpad (it reserves
            // max_token_length, 64 KiB, per parser) and the element stack,
            // so idle streams hold neither.
            self.parser.release_temporaries();
            self.stack = Vec::new();
        }
        r
    }

    fn feed_inner(&mut self, data: &mut &[u8], out: &mut Vec<StreamEvent>) -> Result<(), XmlError> {
        loop {
            let before = data.len();
            let res = self.parser.parse(data, false);
            self.pending_bytes += before - data.len();
            if self.pending_bytes > self.max_stanza_bytes {
                return Err(XmlError::PolicyViolation(format!(
                    "stanza exceeds {} bytes",
                    self.max_stanza_bytes
                )));
            }
            match res {
                Ok(Some(ev)) => self.event(ev, out)?,
                Ok(None) => {
                    // End of document: the root element was closed.
                    return Ok(());
                }
                Err(rxml::error::EndOrError::NeedMoreData) => return Ok(()),
                Err(rxml::error::EndOrError::Error(e)) => return Err(map_error(e)),
            }
        }
    }

    fn event(&mut self, ev: Event, out: &mut Vec<StreamEvent>) -> Result<(), XmlError> {
        match ev {
            Event::XmlDeclaration(..) => {}
            Event::StartElement(_, (namespace, name), attrs) => {
                self.depth += 1;
                if self.depth == 1 {
                    let get = |n: &str| attrs.get(&rxml::Namespace::NONE, n).map(|s| s.to_string());
                    let lang = attrs
                        .get("http://www.w3.org/XML/1998/namespace", "lang")
                        .map(|s| s.to_string());
                    out.push(StreamEvent::Header(StreamHeader {
                        to: get("to"),
                        from: get("from"),
                        version: get("version"),
                        id: get("id"),
                        lang,
                        ns: namespace.to_string(),
                        name: name.to_string(),
                        attrs: attrs
                            .iter()
                            .map(|((ans, an), v)| (ans.to_string(), an.to_string(), v.to_string()))
                            .collect(),
                    }));
                    self.pending_bytes = 0;
                    return Ok(());
                }
                if self.depth - 1 > self.max_depth {
                    return Err(XmlError::PolicyViolation(format!(
                        "elements nested deeper than {}",
                        self.max_depth
                    )));
                }
                let mut el = Element::builder(name.as_str(), namespace.as_str()).build();
                *el.attrs_mut() = attrs;
                self.stack.push(el);
            }
            Event::Text(_, text) => {
                if self.depth <= 1 {
                    // Between stanzas only whitespace (keepalives) is allowed.
                    if !text.chars().all(|c| c.is_ascii_whitespace()) {
                        return Err(XmlError::BadFormat("text outside of stanzas".into()));
                    }
                    if self.stack.is_empty() {
                        self.pending_bytes = 0;
                    }
                } else if let Some(top) = self.stack.last_mut() {
                    top.append_text(text);
                }
            }
            Event::EndElement(_) => {
                self.depth -= 1;
                if self.depth == 0 {
                    out.push(StreamEvent::Close);
                    return Ok(());
                }
                let done = self.stack.pop().expect("balanced by rxml");
                match self.stack.last_mut() {
                    Some(parent) => {
                        parent.append_child(done);
                    }
                    None => {
                        self.pending_bytes = 0;
                        out.push(StreamEvent::Stanza(done));
                    }
                }
            }
        }
        Ok(())
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn map_error(e: rxml::Error) -> XmlError {
    use rxml::Error as E;
    match e {
        E::RestrictedXml(what) => XmlError::RestrictedXml(format!("restricted XML: {what}")),
        E::UndeclaredEntity => XmlError::RestrictedXml("entity references are not allowed".into()),
        other => XmlError::NotWellFormed(other.to_string()),
    }
}

/// Whether a header opens a proper client stream.
pub fn is_stream_root(h: &StreamHeader) -> bool {
    h.ns == ns::STREAM && h.name == "stream"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(chunks: &[&[u8]]) -> Result<Vec<StreamEvent>, XmlError> {
        let mut p = StreamParser::new(10_000, 16);
        let mut out = Vec::new();
        for c in chunks {
            p.feed(c, &mut out)?;
        }
        Ok(out)
    }

    const HDR: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'>";

    #[test]
    fn header_stanzas_and_close_in_any_chunking() {
        let doc = format!(
            "{HDR} <message to='a@b'><body>hi &amp; &#x263a;</body></message>\n<iq type='get' id='1'/></stream:stream>"
        );
        for size in [1usize, 2, 3, 7, 64, 4096] {
            let chunks: Vec<&[u8]> = doc.as_bytes().chunks(size).collect();
            let evs = parse_all(&chunks).unwrap();
            assert_eq!(evs.len(), 4, "chunk size {size}");
            let StreamEvent::Header(h) = &evs[0] else {
                panic!()
            };
            assert_eq!(h.to.as_deref(), Some("localhost"));
            assert!(is_stream_root(h));
            let StreamEvent::Stanza(m) = &evs[1] else {
                panic!()
            };
            assert_eq!(m.ns(), ns::CLIENT);
            assert_eq!(
                m.get_child("body", ns::CLIENT).unwrap().text(),
                "hi & \u{263a}"
            );
            assert!(matches!(evs[3], StreamEvent::Close));
        }
    }

    #[test]
    fn refuses_dtd_pi_comment_and_entities() {
        for bad in [
            "<!DOCTYPE x [<!ENTITY a 'b'>]>",
            "<?foo bar?>",
            "<!-- c -->",
        ] {
            let e = parse_all(&[HDR.as_bytes(), bad.as_bytes()]).unwrap_err();
            assert!(
                matches!(e, XmlError::RestrictedXml(_) | XmlError::NotWellFormed(_)),
                "{bad}: {e:?}"
            );
        }
        let e = parse_all(&[HDR.as_bytes(), b"<message>&xxe;</message>"]).unwrap_err();
        assert_eq!(e.condition(), "restricted-xml");
        let e = parse_all(&[HDR.as_bytes(), b"<?foo bar?>"]).unwrap_err();
        assert_eq!(e.condition(), "restricted-xml");
        let e = parse_all(&[HDR.as_bytes(), b"<!-- c -->"]).unwrap_err();
        assert_eq!(e.condition(), "restricted-xml");
    }

    #[test]
    fn limits_size_and_depth() {
        let big = format!("<message><body>{}</body></message>", "x".repeat(20_000));
        let e = parse_all(&[HDR.as_bytes(), big.as_bytes()]).unwrap_err();
        assert_eq!(e.condition(), "policy-violation");
        let deep = "<a>".repeat(40);
        let e = parse_all(&[HDR.as_bytes(), deep.as_bytes()]).unwrap_err();
        assert_eq!(e.condition(), "policy-violation");
        // Many small stanzas and keepalives do not add up.
        let mut chunks = vec![HDR.as_bytes().to_vec()];
        for _ in 0..2000 {
            chunks.push(b"<presence/> \n".to_vec());
        }
        let refs: Vec<&[u8]> = chunks.iter().map(|c| c.as_slice()).collect();
        assert_eq!(parse_all(&refs).unwrap().len(), 2001);
    }

    #[test]
    fn malformed_is_not_well_formed() {
        let e = parse_all(&[HDR.as_bytes(), b"<message></iq>"]).unwrap_err();
        assert_eq!(e.condition(), "not-well-formed");
        let e = parse_all(&[HDR.as_bytes(), b"<a:b/>"]).unwrap_err();
        assert_eq!(e.condition(), "not-well-formed");
    }
}
