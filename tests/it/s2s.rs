//! Federation between two in-process servers (a.test and b.test) found
//! through DNS SRV records served by a small DNS server on loopback: the
//! `_xmpps-server` (direct TLS, XEP-0368) and `_xmpp-server` (STARTTLS)
//! records are tried in priority order; limits apply to s2s streams.

use crate::common::*;
use simple_dns::rdata::{RData, SRV};
use simple_dns::{CLASS, Name, Packet, RCODE, ResourceRecord};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::net::UdpSocket;

/// name → SRV records (priority, port); targets are "localhost".
type Zone = Arc<Mutex<HashMap<String, Vec<(u16, u16)>>>>;

/// A DNS server answering SRV questions from `zone` (NXDOMAIN otherwise);
/// returns its address and the names it was asked.
async fn dns_server(zone: Zone) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    let asked = Arc::new(Mutex::new(Vec::new()));
    let log = asked.clone();
    tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        loop {
            let Ok((n, from)) = sock.recv_from(&mut buf).await else {
                return;
            };
            let Ok(q) = Packet::parse(&buf[..n]) else {
                continue;
            };
            let Some(question) = q.questions.first() else {
                continue;
            };
            let name = question.qname.to_string();
            log.lock().unwrap().push(name.clone());
            let mut reply = Packet::new_reply(q.id());
            reply.questions.push(question.clone());
            let records = zone.lock().unwrap().get(&name).cloned();
            match records {
                Some(records) => {
                    for (priority, port) in records {
                        reply.answers.push(ResourceRecord::new(
                            Name::new_unchecked(&name).into_owned(),
                            CLASS::IN,
                            60,
                            RData::SRV(SRV {
                                priority,
                                weight: 0,
                                port,
                                target: Name::new_unchecked("localhost"),
                            }),
                        ));
                    }
                }
                None => *reply.rcode_mut() = RCODE::NameError,
            }
            let bytes = reply.build_bytes_vec().unwrap();
            let _ = sock.send_to(&bytes, from).await;
        }
    });
    (addr, asked)
}

/// A port where nothing listens.
fn dead_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

struct Federation {
    a: TestServer,
    b: TestServer,
    zone: Zone,
    asked: Arc<Mutex<Vec<String>>>,
}

/// a.test and b.test (with a direct-TLS s2s listener too), both asking the
/// test DNS server, which knows a.test's STARTTLS port; b.test's records
/// are for each test to set.
async fn federation() -> Federation {
    let zone: Zone = Default::default();
    let (dns, asked) = dns_server(zone.clone()).await;
    let start = |host: &'static str| {
        TestServer::start_with(Backend::Sqlite, move |c| {
            c.hosts = vec![host.into()];
            c.s2s.direct_tls_port = Some(0);
            c.s2s.nameservers = vec![dns.to_string()];
        })
    };
    let a = start("a.test").await;
    let b = start("b.test").await;
    a.add_user("alice", "pw").await;
    b.add_user("bob", "pw").await;
    let a_port = a.running().s2s_listener.unwrap().port();
    zone.lock()
        .unwrap()
        .insert("_xmpp-server._tcp.a.test".into(), vec![(0, a_port)]);
    Federation { a, b, zone, asked }
}

impl Federation {
    fn b_ports(&self) -> (u16, u16) {
        let r = self.b.running();
        (
            r.s2s_listener.unwrap().port(),
            r.s2s_tls_listener.unwrap().port(),
        )
    }

    fn set_b(&self, tls: Vec<(u16, u16)>, plain: Vec<(u16, u16)>) {
        let mut z = self.zone.lock().unwrap();
        z.insert("_xmpps-server._tcp.b.test".into(), tls);
        z.insert("_xmpp-server._tcp.b.test".into(), plain);
    }

    /// alice@a.test and bob@b.test chat both ways.
    async fn chat(&self) {
        let mut alice = Client::login_to(self.a.addr(), "a.test", "alice", "pw", "r").await;
        let mut bob = Client::login_to(self.b.addr(), "b.test", "bob", "pw", "r").await;
        for c in [&mut alice, &mut bob] {
            c.send("<presence/>").await; // available: chat to the bare JID reaches it
            let me = c.jid.clone();
            c.recv_until(|e| e.name() == "presence" && e.attr("from") == Some(me.as_str()))
                .await;
        }
        alice
            .send("<message to='bob@b.test' type='chat' id='m1'><body>hi b</body></message>")
            .await;
        let m = bob
            .recv_until(|e| e.name() == "message" && e.attr("id") == Some("m1"))
            .await;
        assert_eq!(m.attr("from"), Some("alice@a.test/r"));
        assert_eq!(m.get_child("body", "jabber:client").unwrap().text(), "hi b");
        bob.send("<message to='alice@a.test/r' type='chat' id='m2'><body>hi a</body></message>")
            .await;
        let m = alice
            .recv_until(|e| e.name() == "message" && e.attr("id") == Some("m2"))
            .await;
        assert_eq!(m.attr("from"), Some("bob@b.test/r"));
    }

    fn was_asked(&self, name: &str) -> bool {
        self.asked.lock().unwrap().iter().any(|n| n == name)
    }
}

#[tokio::test]
async fn srv_direct_tls_record_is_preferred() {
    let f = federation().await;
    let (_, b_tls) = f.b_ports();
    // Equal priority: direct TLS first (XEP-0368). The STARTTLS record
    // leads nowhere, so the chat proves the direct-TLS one was used.
    f.set_b(vec![(10, b_tls)], vec![(10, dead_port())]);
    f.chat().await;
    assert!(f.was_asked("_xmpps-server._tcp.b.test"));
    assert!(f.was_asked("_xmpp-server._tcp.b.test"));
}

#[tokio::test]
async fn srv_records_are_tried_in_priority_order() {
    let f = federation().await;
    let (b_plain, _) = f.b_ports();
    // The preferred (direct TLS) target is down: the next record works.
    f.set_b(vec![(0, dead_port())], vec![(5, b_plain)]);
    f.chat().await;
}

#[tokio::test]
async fn without_srv_records_the_domain_address_is_tried() {
    // No records for b.test and nothing on b.test:5269: the A/AAAA fallback
    // fails and the sender gets remote-server-not-found.
    let f = federation().await;
    let mut alice = Client::login_to(f.a.addr(), "a.test", "alice", "pw", "r").await;
    alice
        .send("<message to='bob@nowhere.test' type='chat' id='x'><body>?</body></message>")
        .await;
    let e = alice
        .recv_until(|e| e.name() == "message" && e.attr("type") == Some("error"))
        .await;
    assert_eq!(
        error_condition(&e).as_deref(),
        Some("remote-server-not-found")
    );
    assert!(f.was_asked("_xmpp-server._tcp.nowhere.test"));
}

#[tokio::test]
async fn oversized_stanza_on_a_server_stream_is_refused() {
    // The stanza size limit applies before authentication, as on c2s.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let f = federation().await;
    let mut tcp = tokio::net::TcpStream::connect(f.b.running().s2s_listener.unwrap())
        .await
        .unwrap();
    let limit = f.b.config.limits.max_stanza_bytes;
    let header = "<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' from='a.test' to='b.test' version='1.0'>";
    tcp.write_all(header.as_bytes()).await.unwrap();
    let big = format!(
        "<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls' x='{}'/>",
        "a".repeat(limit + 10)
    );
    let _ = tcp.write_all(big.as_bytes()).await;
    let mut got = Vec::new();
    let _ = tokio::time::timeout(TIMEOUT, tcp.read_to_end(&mut got)).await;
    let got = String::from_utf8_lossy(&got);
    assert!(got.contains("policy-violation"), "{got}");
}

#[tokio::test]
async fn a_stuck_remote_server_delays_nobody_else() {
    let f = federation().await;
    let (b_plain, _) = f.b_ports();
    f.set_b(vec![], vec![(0, b_plain)]);
    f.a.add_user("carol", "pw").await;
    // stuck.test accepts connections and never says a word.
    let stuck = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let stuck_port = stuck.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = stuck.accept().await {
            held.push(s);
        }
    });
    f.zone
        .lock()
        .unwrap()
        .insert("_xmpp-server._tcp.stuck.test".into(), vec![(0, stuck_port)]);

    let mut alice = Client::login_to(f.a.addr(), "a.test", "alice", "pw", "r").await;
    let mut carol = Client::login_to(f.a.addr(), "a.test", "carol", "pw", "r").await;
    let mut bob = Client::login_to(f.b.addr(), "b.test", "bob", "pw", "r").await;
    for (i, to) in [
        "x@stuck.test",
        "carol@a.test/r",
        "bob@b.test/r",
        "y@stuck.test",
    ]
    .iter()
    .enumerate()
    {
        alice
            .send(&format!(
                "<message to='{to}' type='chat' id='s{i}'><body>{i}</body></message>"
            ))
            .await;
    }
    // Both arrive while the link to stuck.test is still being set up (its
    // connect timeout, 20 s, is longer than the wait here).
    carol
        .recv_until(|e| e.name() == "message" && e.attr("id") == Some("s1"))
        .await;
    bob.recv_until(|e| e.name() == "message" && e.attr("id") == Some("s2"))
        .await;
}
