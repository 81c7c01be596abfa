//! An XML stream over a transport: reading with a rate limit, parsing into
//! events, writing, and stream errors. Byte streams (TCP, TLS) carry one XML
//! document; WebSocket (RFC 7395) carries one element per message, with
//! `<open/>`/`<close/>` standing for the stream root, so the code above sees
//! the same events either way.

use crate::config::LimitsConfig;
use crate::net::Transport;
use crate::xml::{StreamEvent, StreamParser, XmlError};
use axum::extract::ws::{Message, WebSocket};
use minidom::Element;
use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};
use tokio::time::Instant;

const READ_CHUNK: usize = 4096;

thread_local! {
    /// One read buffer per thread, borrowed only inside a poll.
    static READ_BUF: std::cell::RefCell<Box<[u8]>> =
        std::cell::RefCell::new(vec![0u8; READ_CHUNK].into_boxed_slice());
}
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
pub const WS_FRAMING: &str = "urn:ietf:params:xml:ns:xmpp-framing";

#[derive(Debug)]
pub enum ConnError {
    Io(io::Error),
    Xml(XmlError),
    /// The peer closed the connection.
    Eof,
}

impl From<io::Error> for ConnError {
    fn from(e: io::Error) -> Self {
        ConnError::Io(e)
    }
}

/// Token bucket on bytes read: a client over its rate is simply read later.
struct RateLimit {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl RateLimit {
    fn delay(&mut self) -> Option<Duration> {
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate).min(self.burst);
        self.last = now;
        (self.tokens < 0.0).then(|| Duration::from_secs_f64(-self.tokens / self.rate))
    }
}

pub struct XmlConn {
    pub io: Transport,
    parser: StreamParser,
    events: VecDeque<StreamEvent>,
    max_stanza: usize,
    max_depth: usize,
    rate: RateLimit,
    /// Our `<stream:stream>` header went out (a stream error needs one first).
    pub header_sent: bool,
    /// Our header on a byte stream, held back to go out in the same write as
    /// what follows it (features or an error): one segment and one wake-up
    /// of the client instead of two.
    held: Option<Vec<u8>>,
}

impl XmlConn {
    pub fn new(io: Transport, limits: &LimitsConfig) -> Self {
        XmlConn {
            io,
            parser: StreamParser::new(limits.max_stanza_bytes, limits.max_depth),
            events: VecDeque::new(),
            max_stanza: limits.max_stanza_bytes,
            max_depth: limits.max_depth,
            rate: RateLimit {
                rate: limits.c2s_rate_bytes.max(1) as f64,
                burst: limits.c2s_burst_bytes.max(1) as f64,
                tokens: limits.c2s_burst_bytes.max(1) as f64,
                last: Instant::now(),
            },
            header_sent: false,
            held: None,
        }
    }

    /// Start a new stream (after STARTTLS or SASL): fresh parser, no header sent.
    pub fn restart(&mut self) {
        self.parser = StreamParser::new(self.max_stanza, self.max_depth);
        self.events.clear();
        self.header_sent = false;
    }

    /// Whether parsed events are waiting to be taken.
    pub fn has_events(&self) -> bool {
        !self.events.is_empty()
    }

    /// Whether the next parsed event is a stanza that `pred` accepts.
    pub fn next_is(&self, pred: impl Fn(&Element) -> bool) -> bool {
        matches!(self.events.front(), Some(StreamEvent::Stanza(e)) if pred(e))
    }

    pub fn pop(&mut self) -> Option<StreamEvent> {
        let ev = self.events.pop_front();
        if ev.is_none() && self.events.capacity() > 0 {
            self.events = VecDeque::new(); // keep no capacity while idle
        }
        ev
    }

    /// Read once and parse. Cancel-safe: nothing is consumed until the read returns.
    pub async fn read_some(&mut self) -> Result<(), ConnError> {
        // The rare and the framed paths are boxed: this future is part of
        // every idle session's state, so only the byte-stream read stays inline.
        if let Some(d) = self.rate.delay() {
            Box::pin(tokio::time::sleep(d)).await;
        }
        if let Transport::Bosh { inbound, .. } = &mut self.io {
            let ev = inbound.recv().await.ok_or(ConnError::Eof)?;
            self.events.push_back(ev);
            return Ok(());
        }
        if let Transport::WebSocket { ws, .. } = &mut self.io {
            let text = Box::pin(read_text(ws)).await?;
            self.rate.tokens -= text.len() as f64;
            let ev = parse_frame(&text, self.max_stanza, self.max_depth).map_err(ConnError::Xml)?;
            self.events.push_back(ev);
            return Ok(());
        }
        // Read into the worker thread's buffer and parse within the same
        // poll: the buffer is never held across an await, so an idle
        // connection owns no read buffer (idle memory, BENCHMARKS.md).
        let (io, parser, events, rate) = (
            &mut self.io,
            &mut self.parser,
            &mut self.events,
            &mut self.rate,
        );
        std::future::poll_fn(|cx| {
            READ_BUF.with_borrow_mut(|buf| {
                let mut rb = ReadBuf::new(&mut buf[..]);
                match Pin::new(&mut *io).poll_read(cx, &mut rb) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(Err(e)) => Poll::Ready(Err(ConnError::Io(e))),
                    Poll::Ready(Ok(())) if rb.filled().is_empty() => {
                        Poll::Ready(Err(ConnError::Eof))
                    }
                    Poll::Ready(Ok(())) => {
                        let data = rb.filled();
                        rate.tokens -= data.len() as f64;
                        let mut out = Vec::new();
                        let r = parser.feed(data, &mut out);
                        events.extend(out);
                        Poll::Ready(r.map_err(ConnError::Xml))
                    }
                }
            })
        })
        .await
    }

    /// The next event, reading as needed.
    pub async fn next(&mut self) -> Result<StreamEvent, ConnError> {
        loop {
            if let Some(ev) = self.events.pop_front() {
                return Ok(ev);
            }
            self.read_some().await?;
        }
    }

    /// Write one element (over WebSocket: one message) or, on a byte stream, any bytes.
    pub async fn write(&mut self, data: &[u8]) -> io::Result<()> {
        self.write_frames(&[data]).await
    }

    /// Write several elements: one write on a byte stream, one message each over WebSocket.
    pub async fn write_frames(&mut self, frames: &[&[u8]]) -> io::Result<()> {
        let held = self.held.take();
        let io = &mut self.io;
        let work = async {
            if let Transport::Bosh { outbound, .. } = io {
                for f in frames {
                    let out = crate::xep::bosh::BoshOut::Frame(bytes::Bytes::copy_from_slice(f));
                    outbound
                        .send(out)
                        .await
                        .map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))?;
                }
                return Ok(());
            }
            if let Transport::WebSocket { ws, .. } = io {
                for f in frames {
                    let text = std::str::from_utf8(f)
                        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not UTF-8"))?;
                    ws.send(Message::Text(text.into()))
                        .await
                        .map_err(io::Error::other)?;
                }
                return Ok(());
            }
            if let Some(mut all) = held {
                frames.iter().for_each(|f| all.extend_from_slice(f));
                io.write_all(&all).await?;
            } else if let [one] = frames {
                io.write_all(one).await?;
            } else {
                let mut all = Vec::with_capacity(frames.iter().map(|f| f.len()).sum());
                frames.iter().for_each(|f| all.extend_from_slice(f));
                io.write_all(&all).await?;
            }
            io.flush().await
        };
        match tokio::time::timeout(WRITE_TIMEOUT, work).await {
            Ok(r) => r,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "peer does not read",
            )),
        }
    }

    /// Send our stream header (`<stream:stream>`, or RFC 7395 `<open/>`).
    pub async fn send_header(&mut self, from: &str, id: &str) -> io::Result<()> {
        let from = crate::xml::escape(from);
        if matches!(self.io, Transport::Bosh { .. }) {
            // The BOSH session response frames the stream; nothing to send.
            self.header_sent = true;
            return Ok(());
        }
        let h = if self.io.is_websocket() {
            format!(
                "<open xmlns='{WS_FRAMING}' id='{id}' from='{from}' version='1.0' xml:lang='en'/>"
            )
        } else {
            format!(
                "<?xml version='1.0'?><stream:stream xmlns='{}' xmlns:stream='{}' id='{id}' from='{from}' version='1.0' xml:lang='en'>",
                crate::xml::ns::CLIENT,
                crate::xml::ns::STREAM,
            )
        };
        self.header_sent = true;
        if self.io.is_framed() {
            return self.write(h.as_bytes()).await;
        }
        self.held = Some(h.into_bytes());
        Ok(())
    }

    /// Stream features as `<stream:features>` (the prefix most clients expect);
    /// element-framed transports declare the prefix on the element itself.
    pub async fn send_features(&mut self, features: &minidom::Element) -> io::Result<()> {
        use crate::xml::ElementExt;
        let bytes = features.to_bytes();
        let open = format!("<features xmlns='{}'", crate::xml::ns::STREAM);
        // Our serializer writes `<features xmlns='…'>…</features>` (or `…/>`):
        // swap the name for the prefixed one without re-scanning the text.
        let body = bytes
            .strip_prefix(open.as_bytes())
            .expect("features element from our serializer");
        let (inner, close): (&[u8], &[u8]) = match body.strip_suffix(b"</features>") {
            Some(inner) => (inner, b"</stream:features>"),
            None => (body, b""),
        };
        let mut out = Vec::with_capacity(bytes.len() + 64);
        out.extend_from_slice(b"<stream:features");
        if self.io.is_framed() {
            out.extend_from_slice(format!(" xmlns:stream='{}'", crate::xml::ns::STREAM).as_bytes());
        }
        out.extend_from_slice(inner);
        out.extend_from_slice(close);
        self.write(&out).await
    }

    /// Our side of the stream ends: `</stream:stream>` or RFC 7395 `<close/>`.
    pub async fn end_stream(&mut self) -> io::Result<()> {
        if let Transport::Bosh { outbound, .. } = &mut self.io {
            return outbound
                .send(crate::xep::bosh::BoshOut::End)
                .await
                .map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe));
        }
        if self.io.is_websocket() {
            return self
                .write(format!("<close xmlns='{WS_FRAMING}'/>").as_bytes())
                .await;
        }
        self.write(b"</stream:stream>").await
    }

    /// Send a stream error and close the stream (best effort).
    pub async fn stream_error(&mut self, condition: &str, text: Option<&str>, from: &str) {
        if !self.header_sent {
            let _ = self.send_header(from, &crate::c2s::new_id()).await;
        }
        tracing::debug!(condition, text, "stream error");
        let bytes = crate::stanza::stream_error_bytes(condition, text);
        if self.io.is_framed() {
            let full = String::from_utf8_lossy(&bytes);
            let error = full.trim_end_matches("</stream:stream>").replacen(
                "<stream:error>",
                &format!("<stream:error xmlns:stream='{}'>", crate::xml::ns::STREAM),
                1,
            );
            let _ = self.write(error.as_bytes()).await;
            let _ = self.end_stream().await;
            self.close().await;
        } else {
            self.write_and_close(&bytes).await;
        }
    }

    /// End our stream and the connection (we answer the peer's close).
    pub async fn end_stream_and_close(&mut self) {
        if self.io.is_framed() {
            let _ = self.end_stream().await;
            self.close().await;
        } else {
            self.write_and_close(b"</stream:stream>").await;
        }
    }

    /// Our last bytes on a byte stream, then shut down. Over TLS they leave
    /// in one segment with the close_notify, not two.
    async fn write_and_close(&mut self, last: &[u8]) {
        let mut all = self.held.take().unwrap_or_default();
        all.extend_from_slice(last);
        if !self.io.queue_tls(&all) {
            let _ = self.write(&all).await;
        }
        self.close().await;
    }

    /// Close our side: give the peer a moment to close theirs, then shut down.
    pub async fn close(&mut self) {
        if let Transport::WebSocket { ws, .. } = &mut self.io {
            let _ =
                tokio::time::timeout(Duration::from_secs(2), ws.send(Message::Close(None))).await;
            return;
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), self.io.shutdown()).await;
    }
}

/// The next text message; WebSocket pings are answered by the library.
async fn read_text(ws: &mut WebSocket) -> Result<String, ConnError> {
    loop {
        match ws.recv().await {
            None | Some(Ok(Message::Close(_))) => return Err(ConnError::Eof),
            Some(Err(e)) => return Err(ConnError::Io(io::Error::other(e))),
            Some(Ok(Message::Text(t))) => return Ok(t.to_string()),
            Some(Ok(Message::Binary(_))) => {
                return Err(ConnError::Xml(XmlError::BadFormat(
                    "XMPP over WebSocket uses text messages".into(),
                )));
            }
            Some(Ok(_)) => continue,
        }
    }
}

/// One WebSocket message is exactly one element (RFC 7395 §3.3); it is parsed
/// inside a synthetic stream root with the same limits as a TCP stream.
fn parse_frame(text: &str, max_stanza: usize, max_depth: usize) -> Result<StreamEvent, XmlError> {
    if text.len() > max_stanza {
        return Err(XmlError::PolicyViolation(format!(
            "stanza exceeds {max_stanza} bytes"
        )));
    }
    let mut parser = StreamParser::new(max_stanza + 256, max_depth);
    let mut out = Vec::new();
    let root = format!(
        "<stream:stream xmlns='jabber:client' xmlns:stream='{}'>",
        crate::xml::ns::STREAM
    );
    parser.feed(root.as_bytes(), &mut out)?;
    parser.feed(text.as_bytes(), &mut out)?;
    let mut elements = out.into_iter().filter_map(|e| match e {
        StreamEvent::Stanza(el) => Some(el),
        _ => None,
    });
    let (Some(el), None) = (elements.next(), elements.next()) else {
        return Err(XmlError::BadFormat(
            "one complete element per WebSocket message".into(),
        ));
    };
    Ok(match (el.ns().as_str(), el.name()) {
        (WS_FRAMING, "open") => StreamEvent::Header(crate::xml::StreamHeader {
            to: el.attr("to").map(String::from),
            from: el.attr("from").map(String::from),
            version: el.attr("version").map(String::from),
            lang: None,
            id: el.attr("id").map(String::from),
            // The framing <open/> stands for the stream root.
            ns: crate::xml::ns::STREAM.into(),
            name: "stream".into(),
            attrs: Vec::new(),
        }),
        (WS_FRAMING, "close") => StreamEvent::Close,
        _ => StreamEvent::Stanza(el),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn websocket_frames() {
        let open = parse_frame(
            &format!("<open xmlns='{WS_FRAMING}' to='localhost' version='1.0'/>"),
            10_000,
            16,
        )
        .unwrap();
        assert!(
            matches!(open, StreamEvent::Header(h) if h.to.as_deref() == Some("localhost") && crate::xml::is_stream_root(&h))
        );
        let m = parse_frame(
            "<message xmlns='jabber:client' to='a@b'><body>x</body></message>",
            10_000,
            16,
        )
        .unwrap();
        assert!(
            matches!(m, StreamEvent::Stanza(e) if e.name() == "message" && e.ns() == "jabber:client")
        );
        assert!(matches!(
            parse_frame(&format!("<close xmlns='{WS_FRAMING}'/>"), 10_000, 16).unwrap(),
            StreamEvent::Close
        ));
        assert!(parse_frame("<a/><b/>", 10_000, 16).is_err());
        assert!(parse_frame("<a>", 10_000, 16).is_err());
        assert_eq!(
            parse_frame(&"x".repeat(20_000), 10_000, 16)
                .unwrap_err()
                .condition(),
            "policy-violation"
        );
        assert_eq!(
            parse_frame("<?pi x?>", 10_000, 16).unwrap_err().condition(),
            "restricted-xml"
        );
    }
}
