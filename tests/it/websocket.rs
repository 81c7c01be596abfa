//! RFC 7395 XMPP over WebSocket, and XEP-0156 discovery.

use crate::common::*;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use futures_util::{SinkExt, StreamExt};
use minidom::Element;
use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest};
use xmppd::sasl::HashAlg;
use xmppd::sasl::scram::client as scram;

const FRAMING: &str = "urn:ietf:params:xml:ns:xmpp-framing";
type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(s: &TestServer) -> Ws {
    let mut req = format!("ws://{}/xmpp-websocket", s.http_addr())
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", "xmpp".parse().unwrap());
    let (ws, resp) = tokio_tungstenite::connect_async(req)
        .await
        .expect("WebSocket upgrade");
    assert_eq!(resp.headers()["sec-websocket-protocol"], "xmpp");
    ws
}

async fn send(ws: &mut Ws, text: &str) {
    ws.send(Message::Text(text.into())).await.unwrap();
}

/// Next element; each message must be exactly one.
async fn recv(ws: &mut Ws) -> Element {
    loop {
        let m = tokio::time::timeout(TIMEOUT, ws.next())
            .await
            .expect("timed out")
            .expect("closed")
            .unwrap();
        if let Message::Text(t) = m {
            return t
                .as_str()
                .parse::<Element>()
                .unwrap_or_else(|e| panic!("one element per message: {t}: {e}"));
        }
    }
}

async fn recv_until(ws: &mut Ws, pred: impl Fn(&Element) -> bool) -> Element {
    for _ in 0..100 {
        let e = recv(ws).await;
        if pred(&e) {
            return e;
        }
    }
    panic!("no matching element");
}

async fn open(ws: &mut Ws) -> Element {
    send(
        ws,
        &format!("<open xmlns='{FRAMING}' to='localhost' version='1.0'/>"),
    )
    .await;
    let o = recv(ws).await;
    assert!(o.is("open", FRAMING), "{}", xml(&o));
    assert_eq!(o.attr("from"), Some("localhost"));
    recv(ws).await
}

async fn login(s: &TestServer, user: &str) -> Ws {
    let mut ws = connect(s).await;
    let f = open(&mut ws).await;
    assert!(
        f.is("features", "http://etherx.jabber.org/streams"),
        "{}",
        xml(&f)
    );
    assert!(!f.has_child("starttls", "urn:ietf:params:xml:ns:xmpp-tls"));
    assert!(xml(&f).contains("SCRAM-SHA-256"));
    let bare = format!("n={user},r=wsnonce");
    send(
        &mut ws,
        &format!(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-256'>{}</auth>",
            B64.encode(format!("n,,{bare}"))
        ),
    )
    .await;
    let ch = recv(&mut ws).await;
    let sf = String::from_utf8(B64.decode(ch.text()).unwrap()).unwrap();
    let (salt, it) = scram::parse_server_first(&sf).unwrap();
    let keys = scram::keys(HashAlg::Sha256, "pw", &salt, it);
    let (fin, _) = scram::final_message(HashAlg::Sha256, &keys, &bare, &sf, b"n,,");
    send(
        &mut ws,
        &format!(
            "<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{}</response>",
            B64.encode(fin)
        ),
    )
    .await;
    assert_eq!(recv(&mut ws).await.name(), "success");
    let f = open(&mut ws).await;
    assert!(f.has_child("bind", "urn:ietf:params:xml:ns:xmpp-bind"));
    send(&mut ws, "<iq type='set' id='b' xmlns='jabber:client'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>web</resource></bind></iq>").await;
    let r = recv(&mut ws).await;
    assert_eq!(r.attr("type"), Some("result"), "{}", xml(&r));
    send(&mut ws, "<presence xmlns='jabber:client'/>").await;
    ws
}

#[tokio::test]
async fn chat_between_websocket_and_tcp() {
    let s = TestServer::start().await;
    s.add_user("web", "pw").await;
    s.add_user("tcp", "pw").await;
    let mut ws = login(&s, "web").await;
    let mut tcp = Client::online(s.addr(), "tcp", "pw", "r").await;
    send(&mut ws, "<message xmlns='jabber:client' to='tcp@localhost' type='chat' id='w1'><body>from the browser</body></message>").await;
    let m = tcp.recv_until(|e| e.attr("id") == Some("w1")).await;
    assert_eq!(m.attr("from"), Some("web@localhost/web"));
    tcp.send("<message to='web@localhost/web' type='chat' id='t1'><body>from TCP</body></message>")
        .await;
    let m = recv_until(&mut ws, |e| e.attr("id") == Some("t1")).await;
    assert_eq!(
        m.get_child("body", "jabber:client").unwrap().text(),
        "from TCP"
    );
    // Closing: the server answers <close/>, and the user goes offline for others.
    send(&mut ws, &format!("<close xmlns='{FRAMING}'/>")).await;
    let c = recv_until(&mut ws, |e| e.is("close", FRAMING)).await;
    assert!(c.is("close", FRAMING));
    tcp.send("<message to='web@localhost/web' type='chat' id='t2'><body>gone?</body></message>")
        .await;
    tcp.sync().await;
    let stored = s
        .running()
        .server
        .storage
        .offline
        .offline_messages("web@localhost", 0, i64::MAX)
        .await
        .unwrap();
    assert_eq!(
        stored.len(),
        1,
        "the closed WebSocket session is gone; the message waits offline"
    );
}

#[tokio::test]
async fn websocket_errors_are_stream_errors() {
    let s = TestServer::start().await;
    let mut ws = connect(&s).await;
    open(&mut ws).await;
    send(&mut ws, "<message xmlns='jabber:client'><body>x</message>").await;
    let e = recv(&mut ws).await;
    assert!(
        e.is("error", "http://etherx.jabber.org/streams"),
        "{}",
        xml(&e)
    );
    assert!(e.has_child("not-well-formed", "urn:ietf:params:xml:ns:xmpp-streams"));
    assert!(recv(&mut ws).await.is("close", FRAMING));
    // Stanzas before authentication.
    let mut ws = connect(&s).await;
    open(&mut ws).await;
    send(
        &mut ws,
        "<message xmlns='jabber:client' to='a@localhost'><body>x</body></message>",
    )
    .await;
    let e = recv(&mut ws).await;
    assert!(
        e.has_child("not-authorized", "urn:ietf:params:xml:ns:xmpp-streams"),
        "{}",
        xml(&e)
    );
}

#[tokio::test]
async fn host_meta_points_to_the_websocket() {
    let s = TestServer::start().await;
    let mut c = tokio::net::TcpStream::connect(s.http_addr()).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    c.write_all(
        b"GET /.well-known/host-meta HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut out = String::new();
    c.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(
        out.contains(&format!(
            "urn:xmpp:alt-connections:websocket' href='ws://localhost:{}/xmpp-websocket'",
            s.http_addr().port()
        )),
        "{out}"
    );
}
