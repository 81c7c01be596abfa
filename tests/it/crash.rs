//! Fault test: the real binary is killed with SIGKILL while a stream-managed
//! client sends; after restart every message the server acknowledged reaches
//! the recipient exactly once, in order.

use crate::common::*;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const SM: &str = "urn:xmpp:sm:3";

fn write_config(dir: &Path) -> std::path::PathBuf {
    let cfg = dir.join("xmppd.toml");
    std::fs::write(
        &cfg,
        format!(
            "hosts = [\"localhost\"]\ndata_dir = \"{d}\"\n[storage]\nurl = \"sqlite://{d}/xmppd.db\"\n\
             [[listeners]]\naddress = \"127.0.0.1\"\nport = 0\ntls = \"starttls\"\n[http]\nlisteners = []\n[s2s]\nenabled = false\n",
            d = dir.display()
        ),
    )
    .unwrap();
    cfg
}

fn xmppd(cfg: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_xmppd"));
    c.arg("--config")
        .arg(cfg)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    c
}

/// A server process, killed when dropped so a failing test leaves nothing behind.
struct Server(Child);

impl Server {
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Start the server on its own port (port 0: the kernel picks, so parallel
/// tests never meet) and learn the address from its log.
async fn spawn(cfg: &Path) -> (Server, SocketAddr) {
    let log_path = cfg.with_file_name("server.log");
    let _ = std::fs::remove_file(&log_path);
    let log = std::fs::File::create(&log_path).unwrap();
    let mut cmd = xmppd(cfg, &["serve"]);
    cmd.stderr(log);
    let mut server = Server(cmd.spawn().expect("start xmppd"));
    for _ in 0..400 {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        let addr = text
            .lines()
            .filter(|l| l.contains("c2s listening"))
            .find_map(|l| {
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix("address="))
            })
            .and_then(|a| a.parse::<SocketAddr>().ok());
        if let Some(addr) = addr {
            return (server, addr);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    server.kill();
    panic!("xmppd did not start listening");
}

/// A data directory with alice and bob created through the CLI, and the server started on it.
async fn fresh_server() -> (tempfile::TempDir, std::path::PathBuf, SocketAddr, Server) {
    let mut dir = tempfile::tempdir().unwrap();
    // XMPPD_TEST_KEEP_LOGS=1 keeps the data directory (and server.log) for diagnosis.
    if std::env::var_os("XMPPD_TEST_KEEP_LOGS").is_some() {
        dir.disable_cleanup(true);
        eprintln!("keeping {}", dir.path().display());
    }
    let cfg = write_config(dir.path());
    for u in ["alice", "bob"] {
        let mut add = xmppd(
            &cfg,
            &["user", "add", &format!("{u}@localhost"), "--password", "pw"],
        );
        assert!(add.status().unwrap().success());
    }
    let (server, addr) = spawn(&cfg).await;
    (dir, cfg, addr, server)
}

/// Send `n` messages with SM; kill the server after `kill_after`; return the ids acknowledged.
async fn send_until_killed(
    addr: std::net::SocketAddr,
    server: &mut Server,
    n: usize,
    kill_after: usize,
) -> Vec<String> {
    let mut alice = Client::login(addr, "alice", "pw", "r").await;
    alice.send(&format!("<enable xmlns='{SM}'/>")).await;
    alice.recv_until(|e| e.is("enabled", SM)).await;
    let mut acked = 0u32;
    let mut sent = Vec::new();
    for i in 0..n {
        let id = format!("m{i:04}");
        alice
            .send(&format!(
                "<message to='bob@localhost' type='chat' id='{id}'><body>{i}</body></message>"
            ))
            .await;
        sent.push(id);
        if i % 10 == 9 {
            alice.send(&format!("<r xmlns='{SM}'/>")).await;
            let a = alice.recv_until(|e| e.is("a", SM)).await;
            acked = a.attr("h").unwrap().parse().unwrap();
        }
        if i == kill_after {
            // Ask once more, then die without warning while the client keeps sending.
            alice.send(&format!("<r xmlns='{SM}'/>")).await;
            let a = alice.recv_until(|e| e.is("a", SM)).await;
            acked = a.attr("h").unwrap().parse().unwrap();
            server.kill();
            break;
        }
    }
    assert!(acked > 0);
    sent.truncate(acked as usize);
    sent
}

fn ids_of(msgs: &[minidom::Element]) -> Vec<String> {
    msgs.iter()
        .map(|m| m.attr("id").unwrap_or("").to_string())
        .collect()
}

/// Every acknowledged id once, in order; unacknowledged extras only after them.
fn check_exactly_once(acked: &[String], got: &[String]) {
    assert!(
        got.len() >= acked.len(),
        "lost messages: acked {} got {}",
        acked.len(),
        got.len()
    );
    assert_eq!(&got[..acked.len()], acked, "acknowledged messages in order");
    let mut seen = std::collections::HashSet::new();
    for id in got {
        assert!(seen.insert(id), "duplicate {id}");
    }
}

#[tokio::test]
async fn sigkill_loses_nothing_acknowledged_offline_recipient() {
    let (_dir, cfg, addr, mut server) = fresh_server().await;
    let acked = send_until_killed(addr, &mut server, 200, 125).await;
    let (mut server, addr) = spawn(&cfg).await;
    let mut bob = Client::login(addr, "bob", "pw", "r").await;
    bob.send("<presence/>").await;
    let mut got = Vec::new();
    // Everything stored arrives before the answer to a ping sent afterwards.
    bob.send("<iq type='get' id='done' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    loop {
        let e = bob
            .recv_until(|e| e.name() == "message" || e.attr("id") == Some("done"))
            .await;
        if e.name() == "iq" {
            break;
        }
        got.push(e);
    }
    check_exactly_once(&acked, &ids_of(&got));
    server.kill();
}

#[tokio::test]
async fn sigkill_loses_nothing_acknowledged_online_recipient() {
    let (_dir, cfg, addr, mut server) = fresh_server().await;
    // Bob is online; he reads what arrives live and remembers the last archive id.
    let mut bob = Client::online(addr, "bob", "pw", "r").await;
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        loop {
            match bob.next_event().await {
                Some(xmppd::xml::StreamEvent::Stanza(e)) if e.name() == "message" => got.push(e),
                Some(xmppd::xml::StreamEvent::Stanza(_))
                | Some(xmppd::xml::StreamEvent::Header(_)) => {}
                _ => return got,
            }
        }
    });
    let acked = send_until_killed(addr, &mut server, 200, 125).await;
    let live = reader.await.unwrap();
    let (mut server, addr) = spawn(&cfg).await;
    // Bob's new device catches up from the last archive id it saw.
    let mut bob = Client::login(addr, "bob", "pw", "r2").await;
    let last = live
        .last()
        .and_then(|m| m.get_child("stanza-id", "urn:xmpp:sid:0"))
        .and_then(|s| s.attr("id"))
        .map(String::from);
    let rsm = match &last {
        Some(l) => format!(
            "<set xmlns='http://jabber.org/protocol/rsm'><max>250</max><after>{l}</after></set>"
        ),
        None => "<set xmlns='http://jabber.org/protocol/rsm'><max>250</max></set>".into(),
    };
    bob.send(&format!(
        "<iq type='set' id='q'><query xmlns='urn:xmpp:mam:2'>{rsm}</query></iq>"
    ))
    .await;
    let mut caught_up = Vec::new();
    loop {
        let e = bob
            .recv_until(|e| e.name() == "message" || e.attr("id") == Some("q"))
            .await;
        if e.name() == "iq" {
            assert_eq!(e.attr("type"), Some("result"), "{}", xml(&e));
            break;
        }
        let inner = e
            .get_child("result", "urn:xmpp:mam:2")
            .and_then(|r| r.get_child("forwarded", "urn:xmpp:forward:0"))
            .and_then(|f| f.get_child("message", "jabber:client"))
            .unwrap()
            .clone();
        caught_up.push(inner);
    }
    let mut all = ids_of(&live);
    all.extend(ids_of(&caught_up));
    check_exactly_once(&acked, &all);
    server.kill();
}
