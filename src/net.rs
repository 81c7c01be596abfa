//! A client connection's byte stream: plain TCP before STARTTLS, TLS after.

use crate::tls_stream::ServerTls;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

pub enum Transport {
    Plain(TcpStream),
    /// Our side of a client or incoming server stream, after the TLS handshake.
    Tls(Box<ServerTls>),
    /// Our side of an outgoing server-to-server stream, after STARTTLS.
    TlsClient(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    /// XMPP over WebSocket (RFC 7395): one element per text message. `secure`
    /// when the HTTP connection is TLS (or loopback, for local development).
    WebSocket {
        ws: Box<axum::extract::ws::WebSocket>,
        secure: bool,
    },
    /// XMPP over BOSH (XEP-0206): elements arrive from and leave through the
    /// HTTP request handler (xep/bosh.rs).
    Bosh {
        inbound: tokio::sync::mpsc::Receiver<crate::xml::StreamEvent>,
        outbound: tokio::sync::mpsc::Sender<crate::xep::bosh::BoshOut>,
        secure: bool,
    },
    /// Placeholder while the stream is being upgraded.
    Gone,
}

impl Transport {
    /// Encrypted (or otherwise trusted) enough for authentication.
    pub fn is_tls(&self) -> bool {
        match self {
            Transport::Tls(_) | Transport::TlsClient(_) => true,
            Transport::WebSocket { secure, .. } | Transport::Bosh { secure, .. } => *secure,
            _ => false,
        }
    }

    pub fn is_websocket(&self) -> bool {
        matches!(self, Transport::WebSocket { .. })
    }

    /// Element-framed (WebSocket, BOSH) rather than one XML document on a byte stream.
    pub fn is_framed(&self) -> bool {
        matches!(self, Transport::WebSocket { .. } | Transport::Bosh { .. })
    }

    /// Hand bytes to the TLS layer without writing them to the socket: they
    /// leave with whatever is flushed next. `false` when not a TLS stream (or
    /// the TLS layer refuses them).
    pub fn queue_tls(&mut self, data: &[u8]) -> bool {
        match self {
            Transport::Tls(s) => s.queue(data).is_ok(),
            _ => false,
        }
    }

    /// Whether [`Self::channel_binding`] has data (without deriving it).
    pub fn can_bind_channel(&self) -> bool {
        matches!(self, Transport::Tls(t) if t.can_bind_channel())
    }

    /// Authentication is over: channel binding data is no longer needed.
    pub fn forget_channel_binding(&mut self) {
        if let Transport::Tls(t) = self {
            t.forget_channel_binding();
        }
    }

    /// RFC 9266 tls-exporter channel binding; only defined for TLS 1.3 here.
    pub fn channel_binding(&self) -> Option<Vec<u8>> {
        let Transport::Tls(t) = self else { return None };
        t.channel_binding()
    }
}

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "transport being upgraded")
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Transport::TlsClient(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Transport::Gone | Transport::WebSocket { .. } | Transport::Bosh { .. } => {
                Poll::Ready(Err(gone()))
            }
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Transport::TlsClient(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Transport::Gone | Transport::WebSocket { .. } | Transport::Bosh { .. } => {
                Poll::Ready(Err(gone()))
            }
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_flush(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Transport::TlsClient(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Transport::Gone | Transport::WebSocket { .. } | Transport::Bosh { .. } => {
                Poll::Ready(Err(gone()))
            }
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Transport::TlsClient(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Transport::Gone | Transport::WebSocket { .. } | Transport::Bosh { .. } => {
                Poll::Ready(Ok(()))
            }
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            Transport::TlsClient(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            Transport::Gone | Transport::WebSocket { .. } | Transport::Bosh { .. } => {
                Poll::Ready(Err(gone()))
            }
        }
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            Transport::Plain(s) => s.is_write_vectored(),
            Transport::Tls(s) => s.is_write_vectored(),
            Transport::TlsClient(s) => s.is_write_vectored(),
            Transport::Gone | Transport::WebSocket { .. } | Transport::Bosh { .. } => false,
        }
    }
}
