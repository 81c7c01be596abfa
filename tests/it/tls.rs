//! The server's TLS layer (src/tls_stream.rs): records split across TCP
//! segments, stanzas larger than one record both ways, client key updates,
//! close_notify.

use crate::common::*;
use std::io::Write;
use tokio::io::AsyncWriteExt;

/// Encrypt `data` as the client would, then write the ciphertext to TCP in
/// `chunk`-byte pieces with pauses, so that the server reads partial records.
async fn send_split(c: &mut Client, data: &[u8], chunk: usize) {
    let tls = c.tls();
    let (tcp, conn) = tls.get_mut();
    let mut wire = Vec::new();
    let mut sent = 0;
    while sent < data.len() {
        // rustls takes at most its buffer limit of plaintext at a time.
        sent += conn.writer().write(&data[sent..]).unwrap();
        while conn.wants_write() {
            conn.write_tls(&mut wire).unwrap();
        }
    }
    for piece in wire.chunks(chunk) {
        tcp.write_all(piece).await.unwrap();
        tcp.flush().await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
}

fn message(to: &str, id: &str, body: &str) -> String {
    format!("<message to='{to}' id='{id}' type='chat'><body>{body}</body></message>")
}

async fn body_of(c: &mut Client, id: &str) -> String {
    let m = c
        .recv_until(|e| e.name() == "message" && e.attr("id") == Some(id))
        .await;
    m.get_child("body", "jabber:client").unwrap().text()
}

async fn alice_and_bob(s: &TestServer) -> (Client, Client) {
    s.add_user("alice", "pw").await;
    s.add_user("bob", "pw").await;
    (
        Client::online(s.addr(), "alice", "pw", "a").await,
        Client::online(s.addr(), "bob", "pw", "b").await,
    )
}

#[tokio::test]
async fn records_split_across_reads_and_larger_than_one_record() {
    let s = TestServer::start().await;
    let (mut alice, mut bob) = alice_and_bob(&s).await;
    let bob_jid = bob.jid.clone();

    // Small stanzas, their records cut every 7 bytes and in the header.
    for (i, chunk) in [7, 3, 1].into_iter().enumerate() {
        let id = format!("small{i}");
        send_split(&mut alice, message(&bob_jid, &id, "hi").as_bytes(), chunk).await;
        assert_eq!(body_of(&mut bob, &id).await, "hi");
    }

    // 100 kB: seven full records from the client, split at odd places; the
    // server must encrypt it into several records for bob.
    let big: String = (0..100_000)
        .map(|i| (b'a' + (i % 26) as u8) as char)
        .collect();
    send_split(&mut alice, message(&bob_jid, "big", &big).as_bytes(), 9_999).await;
    assert_eq!(body_of(&mut bob, "big").await, big);

    // Several stanzas in one client record are all delivered, in order.
    let many: String = (0..20)
        .map(|i| message(&bob_jid, &format!("m{i}"), "x"))
        .collect();
    alice.send(&many).await;
    for i in 0..20 {
        assert_eq!(body_of(&mut bob, &format!("m{i}")).await, "x");
    }
}

#[tokio::test]
async fn client_key_update_keeps_the_stream_working() {
    let s = TestServer::start().await;
    let (mut alice, mut bob) = alice_and_bob(&s).await;
    let bob_jid = bob.jid.clone();
    let alice_jid = alice.jid.clone();
    for round in 0..3 {
        // KeyUpdate with update_requested: the server must answer with its own.
        alice.tls().get_mut().1.refresh_traffic_keys().unwrap();
        let id = format!("after-update{round}");
        alice.send(&message(&bob_jid, &id, "still here")).await;
        assert_eq!(body_of(&mut bob, &id).await, "still here");
        // Data from the server after its KeyUpdate decrypts under the new keys.
        let id = format!("reply{round}");
        bob.send(&message(&alice_jid, &id, "got it")).await;
        assert_eq!(body_of(&mut alice, &id).await, "got it");
        alice.sync().await;
    }
}

#[tokio::test]
async fn close_notify_ends_the_stream() {
    let s = TestServer::start().await;
    s.add_user("alice", "pw").await;
    let mut alice = Client::online(s.addr(), "alice", "pw", "a").await;
    // close_notify and a half-closed TCP: the server ends the stream from
    // its side too (read as the stream's end, not as an error).
    alice.tls().shutdown().await.unwrap();
    assert!(alice.closed().await);
}

#[tokio::test]
async fn a_forged_record_ends_only_that_connection() {
    let s = TestServer::start().await;
    let (mut alice, mut bob) = alice_and_bob(&s).await;
    // An application-data record that fails authentication, written under
    // the client's TLS layer: the server ends this connection (RFC 8446
    // §5.2: bad_record_mac) and nothing else.
    let mut forged = vec![0x17, 0x03, 0x03, 0x00, 0x20];
    forged.extend_from_slice(&[0x5a; 32]);
    let tcp = alice.tls().get_mut().0;
    tcp.write_all(&forged).await.unwrap();
    assert!(alice.closed().await);
    bob.sync().await;
}

#[tokio::test]
async fn a_tls12_client_gets_our_finished_and_its_stream() {
    use tokio::io::AsyncReadExt;
    let s = TestServer::start().await;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(std::sync::Arc::new(xmppd::tls::AnyCertificate))
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(s.direct_addr())
        .await
        .unwrap();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    // In TLS 1.2 the server's Finished comes after the client's: the
    // handshake only completes if the server sends it without being asked.
    let mut tls = tokio::time::timeout(
        TIMEOUT,
        connector.connect("localhost".try_into().unwrap(), tcp),
    )
    .await
    .expect("TLS 1.2 handshake in time")
    .expect("TLS 1.2 handshake");
    assert_eq!(
        tls.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    tls.write_all(
        b"<?xml version='1.0'?><stream:stream to='localhost' version='1.0' \
          xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>",
    )
    .await
    .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("</stream:features>") {
        let n = tokio::time::timeout(TIMEOUT, tls.read(&mut buf))
            .await
            .expect("features in time")
            .unwrap();
        assert!(n > 0, "stream closed before its features");
        got.extend_from_slice(&buf[..n]);
    }
    // No -PLUS over TLS 1.2: tls-exporter is only defined for TLS 1.3 here.
    assert!(!String::from_utf8_lossy(&got).contains("-PLUS"));
}
