//! XEP-0206 XMPP over BOSH.

use crate::common::*;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use minidom::Element;
use xmppd::sasl::HashAlg;
use xmppd::sasl::scram::client as scram;

const NS: &str = "http://jabber.org/protocol/httpbind";

struct Bosh {
    addr: std::net::SocketAddr,
    sid: String,
    rid: u64,
}

async fn post(addr: std::net::SocketAddr, body: &str) -> Element {
    let r = http(
        addr,
        "POST",
        "/http-bind",
        &[("Content-Type", "text/xml; charset=utf-8")],
        body.as_bytes(),
    )
    .await;
    assert_eq!(r.status, 200);
    String::from_utf8(r.body)
        .unwrap()
        .parse::<Element>()
        .unwrap()
}

impl Bosh {
    async fn start(addr: std::net::SocketAddr) -> (Bosh, Element) {
        let b = post(
            addr,
            &format!("<body rid='1000' to='localhost' wait='1' hold='1' xml:lang='en' xmpp:version='1.0' xmlns='{NS}' xmlns:xmpp='urn:xmpp:xbosh'/>"),
        )
        .await;
        let sid = b.attr("sid").expect("sid").to_string();
        assert_eq!(b.attr("hold"), Some("1"));
        (
            Bosh {
                addr,
                sid,
                rid: 1000,
            },
            b,
        )
    }

    async fn send(&mut self, attrs: &str, content: &str) -> Element {
        self.rid += 1;
        post(
            self.addr,
            &format!(
                "<body rid='{}' sid='{}' xmlns='{NS}'{attrs}>{content}</body>",
                self.rid, self.sid
            ),
        )
        .await
    }
}

#[tokio::test]
async fn login_and_chat_over_bosh() {
    let s = TestServer::start().await;
    s.add_user("web", "pw").await;
    s.add_user("tcp", "pw").await;
    let (mut b, first) = Bosh::start(s.http_addr()).await;
    let features = first
        .get_child("features", "http://etherx.jabber.org/streams")
        .expect("features in the session response");
    assert!(xml(features).contains("SCRAM-SHA-256"));
    // SCRAM, then restart, then bind.
    let bare = "n=web,r=boshnonce";
    let r = b
        .send("", &format!("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-256'>{}</auth>", B64.encode(format!("n,,{bare}"))))
        .await;
    let ch = r
        .get_child("challenge", "urn:ietf:params:xml:ns:xmpp-sasl")
        .unwrap();
    let sf = String::from_utf8(B64.decode(ch.text()).unwrap()).unwrap();
    let (salt, it) = scram::parse_server_first(&sf).unwrap();
    let (fin, _) = scram::final_message(
        HashAlg::Sha256,
        &scram::keys(HashAlg::Sha256, "pw", &salt, it),
        bare,
        &sf,
        b"n,,",
    );
    let r = b
        .send(
            "",
            &format!(
                "<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{}</response>",
                B64.encode(fin)
            ),
        )
        .await;
    assert!(
        r.has_child("success", "urn:ietf:params:xml:ns:xmpp-sasl"),
        "{}",
        xml(&r)
    );
    let r = b
        .send(" xmpp:restart='true' xmlns:xmpp='urn:xmpp:xbosh'", "")
        .await;
    assert!(
        xml(&r).contains("urn:ietf:params:xml:ns:xmpp-bind"),
        "{}",
        xml(&r)
    );
    let r = b.send("", "<iq type='set' id='bind' xmlns='jabber:client'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>bosh</resource></bind></iq>").await;
    assert!(xml(&r).contains("web@localhost/bosh"), "{}", xml(&r));
    // Stanzas without a namespace are taken as jabber:client.
    b.send("", "<presence/>").await;
    let mut tcp = Client::online(s.addr(), "tcp", "pw", "r").await;
    b.send(
        "",
        "<message to='tcp@localhost' type='chat' id='b1'><body>over BOSH</body></message>",
    )
    .await;
    let m = tcp.recv_until(|e| e.attr("id") == Some("b1")).await;
    assert_eq!(m.attr("from"), Some("web@localhost/bosh"));
    // A long poll returns when something arrives.
    tcp.send("<message to='web@localhost/bosh' type='chat' id='t1'><body>to BOSH</body></message>")
        .await;
    let mut got = None;
    for _ in 0..5 {
        let r = b.send("", "").await;
        if let Some(m) = r
            .get_child("message", "jabber:client")
            .filter(|m| m.attr("id") == Some("t1"))
        {
            got = Some(m.clone());
            break;
        }
    }
    assert_eq!(
        got.expect("message delivered by long poll")
            .get_child("body", "jabber:client")
            .unwrap()
            .text(),
        "to BOSH"
    );
    let r = b
        .send(
            " type='terminate'",
            "<presence type='unavailable' xmlns='jabber:client'/>",
        )
        .await;
    assert_eq!(r.attr("type"), Some("terminate"));
    // Unknown sessions and bad bodies are refused the BOSH way.
    let r = b.send("", "").await;
    assert_eq!(
        (r.attr("type"), r.attr("condition")),
        (Some("terminate"), Some("item-not-found"))
    );
    let r = post(s.http_addr(), "<notbody/>").await;
    assert_eq!(r.attr("condition"), Some("bad-request"));
    let r = post(
        s.http_addr(),
        &format!("<body rid='1' to='elsewhere.example' xmlns='{NS}'/>"),
    )
    .await;
    assert_eq!(r.attr("condition"), Some("host-unknown"));
}
