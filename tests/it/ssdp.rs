//! XEP-0474 SASL SCRAM downgrade protection: the server-first-message of
//! SCRAM over SASL and SASL2 carries `h`, the hash of the mechanisms and
//! channel-binding types the stream advertised, and the exchange (which
//! signs that message) still succeeds.

use crate::common::*;
use xmppd::sasl::HashAlg;

const SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";
const SASL2: &str = "urn:xmpp:sasl:2";
const SASL_CB: &str = "urn:xmpp:sasl-cb:0";

fn texts(parent: Option<&minidom::Element>, ns: &str) -> Vec<String> {
    parent
        .map(|p| {
            p.children()
                .filter(|c| c.is("mechanism", ns))
                .map(|c| c.text())
                .collect()
        })
        .unwrap_or_default()
}

fn advertised_hash(features: &minidom::Element, sasl2: bool, alg: HashAlg) -> String {
    let mechs = if sasl2 {
        texts(features.get_child("authentication", SASL2), SASL2)
    } else {
        texts(features.get_child("mechanisms", SASL), SASL)
    };
    let cb: Option<Vec<String>> = features
        .get_child("sasl-channel-binding", SASL_CB)
        .map(|c| {
            c.children()
                .filter_map(|t| t.attr("type").map(String::from))
                .collect()
        });
    let mechs: Vec<&str> = mechs.iter().map(String::as_str).collect();
    let cb: Option<Vec<&str>> = cb.as_ref().map(|v| v.iter().map(String::as_str).collect());
    xmppd::sasl::ssdp::hash(alg, &mechs, cb.as_deref())
}

fn h_attr(server_first: &str) -> Option<&str> {
    server_first.split(',').find_map(|a| a.strip_prefix("h="))
}

#[tokio::test]
async fn sasl_scram_carries_the_downgrade_hash() {
    let s = TestServer::start().await;
    s.add_user("alice", "pw").await;
    for (mech, alg) in [
        ("SCRAM-SHA-256-PLUS", HashAlg::Sha256),
        ("SCRAM-SHA-1", HashAlg::Sha1),
    ] {
        let mut c = Client::connect(s.addr()).await;
        c.starttls().await;
        let features = c.open().await;
        let expected = advertised_hash(&features, false, alg);
        assert!(
            features.has_child("sasl-channel-binding", SASL_CB),
            "TLS 1.3: channel binding advertised"
        );
        let r = c.scram(mech, "alice", "pw").await;
        assert_eq!(r.name(), "success", "{mech}");
        assert_eq!(h_attr(&c.server_first), Some(expected.as_str()), "{mech}");
    }
}

#[tokio::test]
async fn sasl2_scram_carries_the_downgrade_hash() {
    let s = TestServer::start().await;
    s.add_user("alice", "pw").await;
    let mut c = Client::connect(s.addr()).await;
    c.starttls().await;
    let features = c.open().await;
    let expected = advertised_hash(&features, true, HashAlg::Sha256);
    let r = c
        .sasl2_scram(
            "SCRAM-SHA-256",
            "alice",
            "pw",
            "<user-agent id='d4565fa7-4d72-4749-b3d3-740edbf87770'/>",
        )
        .await;
    assert_eq!(r.name(), "success");
    assert_eq!(h_attr(&c.server_first), Some(expected.as_str()));
    // A list trimmed by an attacker would not hash the same.
    let trimmed = xmppd::sasl::ssdp::hash(HashAlg::Sha256, &["SCRAM-SHA-1"], None);
    assert_ne!(h_attr(&c.server_first), Some(trimmed.as_str()));
}
