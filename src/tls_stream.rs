//! Server-side TLS over TCP on rustls's unbuffered API.
//!
//! Why not tokio-rustls: rustls's buffered connection resizes a 4 KiB read
//! buffer before every read and never gives it back, a third of an idle
//! session's memory (BENCHMARKS.md). Here records are read from the socket
//! and encrypted into per-thread scratch buffers within one poll. A
//! connection keeps bytes of its own only while they are in flight: a record
//! split across reads, plaintext the reader has not taken yet, ciphertext the
//! socket has not accepted yet; each buffer is freed when it empties.
//!
//! Contract of `process_tls_records` kept here: the buffer passed next is
//! always the one passed before minus the bytes it said to discard, plus
//! what arrived since (`partial` holds that remainder between reads).

use crate::tls_exporter;
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncodeTlsData, EncryptError, UnbufferedStatus, WriteTraffic,
};
use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// One socket read: room for a whole record of the largest size.
const READ_SIZE: usize = 16 * 1024 + 2048;
/// Unsent ciphertext beyond which writers wait for the socket.
const MAX_UNSENT: usize = 256 * 1024;
/// Plaintext encrypted per write call (`write_all` comes back for the
/// rest), which bounds the scratch buffer and what one write leaves unsent.
const MAX_WRITE: usize = 64 * 1024;
/// A partial record or joined handshake message never needs more
/// (rustls refuses handshake messages over 64 KiB).
const MAX_PARTIAL: usize = 64 * 1024 + READ_SIZE;

thread_local! {
    /// Received records while they are decrypted. Only ever borrowed within
    /// one poll; its length only grows (no zeroing per read).
    static READ_SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// Encrypted output before the socket takes it; likewise per poll.
    static WRITE_SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Bytes waiting to be taken from the front; no capacity kept when empty.
#[derive(Default)]
struct Pending {
    buf: Vec<u8>,
    pos: usize,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.pos == self.buf.len()
    }

    fn len(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn unread(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    fn consume(&mut self, n: usize) {
        self.pos += n;
        if self.is_empty() {
            *self = Self::default();
        }
    }

    fn push(&mut self, data: &[u8]) {
        let _ = self.append_with(|buf| {
            buf.extend_from_slice(data);
            Ok(())
        });
    }

    /// Let `f` append to the unread bytes.
    fn append_with(&mut self, f: impl FnOnce(&mut Vec<u8>) -> io::Result<()>) -> io::Result<()> {
        if self.is_empty() {
            *self = Self::default();
        } else if self.pos >= self.buf.len() / 2 {
            // Mostly taken already: move the rest to the front rather than grow.
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        f(&mut self.buf)
    }
}

/// A server TLS stream: the handshake is done by [`accept`].
pub struct ServerTls {
    tcp: TcpStream,
    conn: UnbufferedServerConnection,
    /// Received bytes not yet a whole record.
    partial: Vec<u8>,
    /// Decrypted bytes the reader has not taken.
    plain: Pending,
    /// Ciphertext the socket has not taken.
    unsent: Pending,
    /// For `tls-exporter` channel binding (TLS 1.3 with [`tls_exporter::Capture`]),
    /// until authentication is over.
    exporter: Option<Box<tls_exporter::Secret>>,
    /// close_notify or end of stream received: reads return end of stream.
    read_closed: bool,
    close_sent: bool,
}

/// Run the server side of a TLS handshake on `tcp`.
pub async fn accept(tcp: TcpStream, config: Arc<rustls::ServerConfig>) -> io::Result<ServerTls> {
    let conn = UnbufferedServerConnection::new(config).map_err(invalid)?;
    let mut tls = ServerTls {
        tcp,
        conn,
        partial: Vec::new(),
        plain: Pending::default(),
        unsent: Pending::default(),
        exporter: None,
        read_closed: false,
        close_sent: false,
    };
    std::future::poll_fn(|cx| tls.poll_handshake(cx)).await?;
    Ok(tls)
}

fn invalid(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// Append what `f` writes to `dst`, growing it to the size `f` asks for.
fn append(
    dst: &mut Vec<u8>,
    guess: usize,
    mut f: impl FnMut(&mut [u8]) -> Result<usize, Option<usize>>,
) -> io::Result<()> {
    let start = dst.len();
    dst.resize(start + guess, 0);
    let r = match f(&mut dst[start..]) {
        Err(Some(required)) => {
            dst.resize(start + required, 0);
            f(&mut dst[start..])
        }
        r => r,
    };
    match r {
        Ok(n) => {
            dst.truncate(start + n);
            Ok(())
        }
        Err(_) => {
            dst.truncate(start);
            Err(io::Error::other("TLS record could not be written"))
        }
    }
}

fn encode_into(
    e: &mut EncodeTlsData<'_, ServerConnectionData>,
    dst: &mut Vec<u8>,
) -> io::Result<()> {
    // No guess: the first attempt's error says how much room it needs.
    append(dst, 0, |buf| match e.encode(buf) {
        Ok(n) => Ok(n),
        Err(EncodeError::InsufficientSize(s)) => Err(Some(s.required_size)),
        Err(_) => Err(None),
    })
}

fn encrypt_into(
    w: &mut WriteTraffic<'_, ServerConnectionData>,
    data: &[u8],
    dst: &mut Vec<u8>,
) -> io::Result<()> {
    // Per record at most header, content type, tag (and TLS 1.2's explicit nonce).
    let guess = data.len() + (data.len() / (16 * 1024) + 1) * 64;
    append(dst, guess, |buf| needs_room(w.encrypt(data, buf)))
}

/// An encryption's outcome as [`append`] takes it: bytes written, or the
/// room it needs (`None`: it cannot be done at all).
fn needs_room(r: Result<usize, EncryptError>) -> Result<usize, Option<usize>> {
    match r {
        Ok(n) => Ok(n),
        Err(EncryptError::InsufficientSize(s)) => Err(Some(s.required_size)),
        Err(_) => Err(None),
    }
}

impl ServerTls {
    /// The certificate chain the client presented (s2s: SASL EXTERNAL).
    pub fn peer_certificates(&self) -> Option<&[rustls::pki_types::CertificateDer<'static>]> {
        self.conn.peer_certificates()
    }

    /// Whether [`Self::channel_binding`] has data (without deriving it).
    pub fn can_bind_channel(&self) -> bool {
        self.exporter.is_some()
            && self.conn.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3)
    }

    /// Channel binding is only needed while authenticating: free it after.
    pub fn forget_channel_binding(&mut self) {
        self.exporter = None;
    }

    /// RFC 9266 tls-exporter channel binding: TLS 1.3 only.
    pub fn channel_binding(&self) -> Option<Vec<u8>> {
        if !self.can_bind_channel() {
            return None;
        }
        let suite = self.conn.negotiated_cipher_suite()?.tls13()?;
        tls_exporter::export(
            suite,
            self.exporter.as_ref()?,
            b"EXPORTER-Channel-Binding",
            32,
        )
    }

    /// Encrypt `data` to leave with the next flush, without writing now.
    pub fn queue(&mut self, data: &[u8]) -> io::Result<()> {
        let mut records = Vec::new();
        self.with_write_traffic(|w| encrypt_into(w, data, &mut records))?;
        self.unsent.push(&records);
        Ok(())
    }

    /// Feed `records` (what was kept plus what arrived) to rustls; returns
    /// how many bytes of it are done with. Plaintext goes to `dst` while it
    /// has room, then to `plain`; handshake output to `unsent`.
    fn process(
        &mut self,
        records: &mut [u8],
        mut dst: Option<&mut ReadBuf<'_>>,
    ) -> io::Result<usize> {
        let handshaking = self.conn.is_handshaking();
        if handshaking {
            tls_exporter::take(); // nothing left over from another connection
        }
        let r = self.process_records(records, &mut dst);
        if handshaking && let Some(secret) = tls_exporter::take() {
            self.exporter = Some(Box::new(secret));
        }
        r
    }

    fn process_records(
        &mut self,
        records: &mut [u8],
        dst: &mut Option<&mut ReadBuf<'_>>,
    ) -> io::Result<usize> {
        let mut done = 0;
        loop {
            let UnbufferedStatus { discard, state } =
                self.conn.process_tls_records(&mut records[done..]);
            let state = match state {
                Ok(state) => state,
                Err(e) => {
                    self.send_alert(&mut records[done..]);
                    return Err(invalid(e));
                }
            };
            let mut extra = 0;
            let stop = match state {
                ConnectionState::ReadTraffic(mut r) => {
                    while let Some(record) = r.next_record() {
                        let record = record.map_err(invalid)?;
                        extra += record.discard;
                        let mut data = record.payload;
                        if let Some(dst) = dst.as_deref_mut() {
                            let n = data.len().min(dst.remaining());
                            dst.put_slice(&data[..n]);
                            data = &data[n..];
                        }
                        if !data.is_empty() {
                            self.plain.push(data);
                        }
                    }
                    false
                }
                ConnectionState::EncodeTlsData(mut e) => {
                    self.unsent.append_with(|buf| encode_into(&mut e, buf))?;
                    false
                }
                // `unsent` keeps the order; whoever polls next sends it.
                ConnectionState::TransmitTlsData(t) => {
                    t.done();
                    false
                }
                ConnectionState::PeerClosed => {
                    self.read_closed = true;
                    false
                }
                ConnectionState::Closed => {
                    self.read_closed = true;
                    true
                }
                ConnectionState::BlockedHandshake | ConnectionState::WriteTraffic(_) => true,
                // Early data is never enabled in our configurations.
                _ => return Err(invalid("unexpected TLS state")),
            };
            done += discard + extra;
            if stop {
                return Ok(done);
            }
        }
    }

    /// After a fatal error rustls has an alert ready: send it if the socket
    /// takes it now. `records` is what the failed call was given (rustls may
    /// still refer to it).
    fn send_alert(&mut self, records: &mut [u8]) {
        let status = self.conn.process_tls_records(records);
        // (rustls hands out the queued alert before it looks at the records
        // again, so the failed call's discard does not matter here.)
        if let Ok(ConnectionState::EncodeTlsData(mut e)) = status.state
            && self
                .unsent
                .append_with(|buf| encode_into(&mut e, buf))
                .is_ok()
            && let Ok(n) = self.tcp.try_write(self.unsent.unread())
        {
            self.unsent.consume(n);
        }
    }

    /// Run `f` once rustls allows application data, sending first whatever
    /// it has queued (a KeyUpdate, say) into `unsent`.
    fn with_write_traffic<R>(
        &mut self,
        f: impl FnOnce(&mut WriteTraffic<'_, ServerConnectionData>) -> io::Result<R>,
    ) -> io::Result<R> {
        let mut f = Some(f);
        loop {
            // The kept partial record goes in again, as the contract asks.
            let UnbufferedStatus { discard, state } =
                self.conn.process_tls_records(&mut self.partial);
            let state = state.map_err(invalid)?;
            let result = match state {
                ConnectionState::WriteTraffic(mut w) => {
                    Some((f.take().expect("called once"))(&mut w))
                }
                ConnectionState::EncodeTlsData(mut e) => {
                    self.unsent.append_with(|buf| encode_into(&mut e, buf))?;
                    None
                }
                ConnectionState::TransmitTlsData(t) => {
                    t.done();
                    None
                }
                ConnectionState::ReadTraffic(mut r) => {
                    while let Some(record) = r.next_record() {
                        self.plain.push(record.map_err(invalid)?.payload);
                    }
                    None
                }
                ConnectionState::PeerClosed => {
                    self.read_closed = true;
                    None
                }
                ConnectionState::Closed => Some(Err(io::Error::from(io::ErrorKind::BrokenPipe))),
                _ => Some(Err(io::Error::from(io::ErrorKind::NotConnected))),
            };
            if discard > 0 {
                self.partial.drain(..discard);
            }
            if let Some(r) = result {
                return r;
            }
        }
    }

    /// Read once from the socket and process what came.
    fn poll_fill(
        &mut self,
        cx: &mut Context<'_>,
        dst: Option<&mut ReadBuf<'_>>,
    ) -> Poll<io::Result<()>> {
        READ_SCRATCH.with_borrow_mut(|s| {
            let have = self.partial.len();
            if have > MAX_PARTIAL {
                return Poll::Ready(Err(invalid("TLS message too large")));
            }
            if s.len() < have + READ_SIZE {
                s.resize(have + READ_SIZE, 0);
            }
            s[..have].copy_from_slice(&self.partial);
            let mut rb = ReadBuf::new(&mut s[have..have + READ_SIZE]);
            ready!(Pin::new(&mut self.tcp).poll_read(cx, &mut rb))?;
            let n = rb.filled().len();
            if n == 0 {
                self.read_closed = true;
                return Poll::Ready(Ok(()));
            }
            let total = have + n;
            let used = self.process(&mut s[..total], dst)?;
            if used == total {
                self.partial = Vec::new();
            } else {
                self.partial.clear();
                self.partial.extend_from_slice(&s[used..total]);
            }
            Poll::Ready(Ok(()))
        })
    }

    /// Write `unsent` to the socket until it is empty.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.unsent.is_empty() {
            let n = ready!(Pin::new(&mut self.tcp).poll_write(cx, self.unsent.unread()))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.unsent.consume(n);
        }
        Poll::Ready(Ok(()))
    }

    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            if !self.conn.is_handshaking() {
                // TLS 1.3: what is left (session tickets) leaves with our next
                // bytes, or before the next read. TLS 1.2: our Finished is
                // left, and the client waits for it: send it now.
                if self.conn.protocol_version() != Some(rustls::ProtocolVersion::TLSv1_3) {
                    ready!(self.poll_send(cx))?;
                }
                return Poll::Ready(Ok(()));
            }
            ready!(self.poll_send(cx))?;
            if self.read_closed {
                return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
            }
            // Application data sent with the client's Finished stays in `plain`.
            ready!(self.poll_fill(cx, None))?;
        }
    }
}

impl AsyncRead for ServerTls {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.plain.is_empty() {
                let n = this.plain.len().min(buf.remaining());
                buf.put_slice(&this.plain.unread()[..n]);
                this.plain.consume(n);
                return Poll::Ready(Ok(()));
            }
            if this.read_closed {
                return Poll::Ready(Ok(()));
            }
            // Bytes still owed to the peer (session tickets, the last flight
            // of a TLS 1.2 handshake) leave before we wait for its bytes.
            if !this.unsent.is_empty()
                && let Poll::Ready(Err(e)) = this.poll_send(cx)
            {
                return Poll::Ready(Err(e));
            }
            let before = buf.filled().len();
            ready!(this.poll_fill(cx, Some(buf)))?;
            if buf.filled().len() > before {
                return Poll::Ready(Ok(()));
            }
        }
    }
}

impl AsyncWrite for ServerTls {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.unsent.len() >= MAX_UNSENT {
            ready!(this.poll_send(cx))?;
        }
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let data = &data[..data.len().min(MAX_WRITE)];
        if !this.unsent.is_empty() {
            // Behind earlier bytes: queue, then push what the socket takes.
            this.queue(data)?;
            if let Poll::Ready(Err(e)) = this.poll_send(cx) {
                return Poll::Ready(Err(e));
            }
            return Poll::Ready(Ok(data.len()));
        }
        // The common case: encrypt into the thread's scratch buffer and
        // write it straight out; only what the socket refuses is kept.
        WRITE_SCRATCH.with_borrow_mut(|s| {
            s.clear();
            this.with_write_traffic(|w| encrypt_into(w, data, s))?;
            let mut from = 0;
            if this.unsent.is_empty() {
                // with_write_traffic may have queued a KeyUpdate: it goes first.
                while from < s.len() {
                    match Pin::new(&mut this.tcp).poll_write(cx, &s[from..]) {
                        Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                        Poll::Ready(Ok(n)) => from += n,
                        Poll::Ready(Err(e)) => return Err(e),
                        Poll::Pending => break,
                    }
                }
            }
            this.unsent.push(&s[from..]);
            Ok(())
        })?;
        if !this.unsent.is_empty()
            && let Poll::Ready(Err(e)) = this.poll_send(cx)
        {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.close_sent {
            this.close_sent = true;
            let mut alert = Vec::new();
            // Best effort: a connection already closed by the peer ends anyway.
            let _ = this.with_write_traffic(|w| {
                append(&mut alert, 64, |out| needs_room(w.queue_close_notify(out)))
            });
            this.unsent.push(&alert);
        }
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}
