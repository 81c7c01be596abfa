//! An XML stream over a transport: reading with a rate limit, parsing into
//! events, writing, and stream errors.

use crate::config::LimitsConfig;
use crate::net::Transport;
use crate::xml::{StreamEvent, StreamParser, XmlError};
use std::collections::VecDeque;
use std::io;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

const READ_CHUNK: usize = 4096;
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug)]
pub enum ConnError {
    Io(io::Error),
    Xml(XmlError),
    /// The peer closed the TCP connection.
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
    buf: Vec<u8>,
    max_stanza: usize,
    max_depth: usize,
    rate: RateLimit,
    /// Our `<stream:stream>` header went out (a stream error needs one first).
    pub header_sent: bool,
    /// Bytes read in total, for metrics and tests.
    pub bytes_in: u64,
}

impl XmlConn {
    pub fn new(io: Transport, limits: &LimitsConfig) -> Self {
        XmlConn {
            io,
            parser: StreamParser::new(limits.max_stanza_bytes, limits.max_depth),
            events: VecDeque::new(),
            buf: vec![0u8; READ_CHUNK],
            max_stanza: limits.max_stanza_bytes,
            max_depth: limits.max_depth,
            rate: RateLimit {
                rate: limits.c2s_rate_bytes.max(1) as f64,
                burst: limits.c2s_burst_bytes.max(1) as f64,
                tokens: limits.c2s_burst_bytes.max(1) as f64,
                last: Instant::now(),
            },
            header_sent: false,
            bytes_in: 0,
        }
    }

    /// Start a new stream (after STARTTLS or SASL): fresh parser, no header sent.
    pub fn restart(&mut self) {
        self.parser = StreamParser::new(self.max_stanza, self.max_depth);
        self.events.clear();
        self.header_sent = false;
    }

    pub fn pop(&mut self) -> Option<StreamEvent> {
        self.events.pop_front()
    }

    /// Read once and parse. Cancel-safe: nothing is consumed until `read` returns.
    pub async fn read_some(&mut self) -> Result<(), ConnError> {
        if let Some(d) = self.rate.delay() {
            tokio::time::sleep(d).await;
        }
        let n = self.io.read(&mut self.buf).await?;
        if n == 0 {
            return Err(ConnError::Eof);
        }
        self.bytes_in += n as u64;
        self.rate.tokens -= n as f64;
        let mut out = Vec::new();
        let r = self.parser.feed(&self.buf[..n], &mut out);
        self.events.extend(out);
        r.map_err(ConnError::Xml)
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

    pub async fn write(&mut self, data: &[u8]) -> io::Result<()> {
        let io = &mut self.io;
        match tokio::time::timeout(WRITE_TIMEOUT, async {
            io.write_all(data).await?;
            io.flush().await
        })
        .await
        {
            Ok(r) => r,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "peer does not read",
            )),
        }
    }

    /// Send our stream header.
    pub async fn send_header(&mut self, from: &str, id: &str) -> io::Result<()> {
        let h = format!(
            "<?xml version='1.0'?><stream:stream xmlns='{}' xmlns:stream='{}' id='{id}' from='{}' version='1.0' xml:lang='en'>",
            crate::xml::ns::CLIENT,
            crate::xml::ns::STREAM,
            crate::xml::escape(from),
        );
        self.header_sent = true;
        self.write(h.as_bytes()).await
    }

    /// Send a stream error and close the stream (best effort).
    pub async fn stream_error(&mut self, condition: &str, text: Option<&str>, from: &str) {
        if !self.header_sent {
            let _ = self.send_header(from, &crate::c2s::new_id()).await;
        }
        tracing::debug!(condition, text, "stream error");
        let _ = self
            .write(&crate::stanza::stream_error_bytes(condition, text))
            .await;
        self.close().await;
    }

    /// Close our side: give the peer a moment to close theirs, then shut down.
    pub async fn close(&mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.io.shutdown()).await;
    }
}
