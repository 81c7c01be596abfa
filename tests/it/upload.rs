//! XEP-0363 HTTP upload and /metrics over real HTTP.

use crate::common::*;

const UP: &str = "urn:xmpp:http:upload:0";

fn path_of(url: &str) -> String {
    let rest = url.split_once("://").unwrap().1;
    rest[rest.find('/').unwrap()..].to_string()
}

async fn slot(
    c: &mut Client,
    name: &str,
    size: usize,
    ctype: &str,
) -> Result<(String, String), minidom::Element> {
    let r = c
        .iq(&format!(
            "<iq type='get' id='{{id}}' to='upload.localhost'><request xmlns='{UP}' filename='{name}' size='{size}' content-type='{ctype}'/></iq>"
        ))
        .await;
    let Some(slot) = r.get_child("slot", UP) else {
        return Err(r);
    };
    let put = slot
        .get_child("put", UP)
        .unwrap()
        .attr("url")
        .unwrap()
        .to_string();
    let get = slot
        .get_child("get", UP)
        .unwrap()
        .attr("url")
        .unwrap()
        .to_string();
    Ok((path_of(&put), path_of(&get)))
}

#[tokio::test]
async fn upload_download_and_every_refusal() {
    let s = TestServer::start_with(Backend::Sqlite, |c| {
        c.modules.upload.max_file_size = 1000;
        c.modules.upload.quota_per_user = 2000;
    })
    .await;
    s.add_user("alice", "pw").await;
    let mut alice = s.login("alice", "pw", "r").await;
    let h = s.http_addr();

    // Discovery: listed by the server, with its size limit.
    let r = alice.iq("<iq type='get' id='{id}' to='localhost'><query xmlns='http://jabber.org/protocol/disco#items'/></iq>").await;
    assert!(xml(&r).contains("upload.localhost"));
    let r = alice.iq("<iq type='get' id='{id}' to='upload.localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>").await;
    assert!(
        xml(&r).contains(UP) && xml(&r).contains("max-file-size") && xml(&r).contains(">1000<"),
        "{}",
        xml(&r)
    );

    let data: Vec<u8> = (0..700u32).map(|i| (i * 7 % 251) as u8).collect();
    let (put, get) = slot(&mut alice, "photo 1.jpg", data.len(), "image/jpeg")
        .await
        .unwrap();
    assert!(get.contains("photo%201.jpg"), "{get}");
    // Nothing to GET before the upload.
    assert_eq!(http(h, "GET", &get, &[], b"").await.status, 404);
    // A forged token, a wrong size and a wrong type are refused.
    let forged = put.replace("&t=", "&t=AAAA");
    assert_eq!(
        http(h, "PUT", &forged, &[("Content-Type", "image/jpeg")], &data)
            .await
            .status,
        403
    );
    assert_eq!(
        http(
            h,
            "PUT",
            &put,
            &[("Content-Type", "image/jpeg")],
            &data[..600]
        )
        .await
        .status,
        413
    );
    assert_eq!(
        http(h, "PUT", &put, &[("Content-Type", "text/html")], &data)
            .await
            .status,
        400
    );
    // The real upload, once.
    let r = http(h, "PUT", &put, &[("Content-Type", "image/jpeg")], &data).await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        http(h, "PUT", &put, &[("Content-Type", "image/jpeg")], &data)
            .await
            .status,
        409
    );
    // Download: identical bytes, with the headers web clients need.
    let r = http(h, "GET", &get, &[], b"").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, data);
    assert_eq!(r.headers["content-type"], "image/jpeg");
    assert_eq!(r.headers["content-length"], "700");
    assert_eq!(r.headers["access-control-allow-origin"], "*");
    assert_eq!(r.headers["x-content-type-options"], "nosniff");
    let r = http(h, "GET", &get, &[("Range", "bytes=100-199")], b"").await;
    assert_eq!(r.status, 206);
    assert_eq!(r.body, data[100..200]);
    assert_eq!(r.headers["content-range"], "bytes 100-199/700");
    assert_eq!(http(h, "OPTIONS", &get, &[], b"").await.status, 200);
    // No traversal, no listing.
    assert_eq!(
        http(h, "GET", "/upload/../../etc/passwd", &[], b"")
            .await
            .status,
        404
    );
    assert_eq!(http(h, "GET", "/upload/", &[], b"").await.status, 404);

    // The same content again: its own URL, stored once.
    let (put2, get2) = slot(&mut alice, "copy.jpg", data.len(), "image/jpeg")
        .await
        .unwrap();
    assert_eq!(
        http(h, "PUT", &put2, &[("Content-Type", "image/jpeg")], &data)
            .await
            .status,
        201
    );
    assert_ne!(get, get2);
    assert_eq!(http(h, "GET", &get2, &[], b"").await.body, data);
    let files = std::fs::read_dir(s.config.data_dir.join("uploads/files"))
        .unwrap()
        .count();
    assert_eq!(files, 1, "identical files are stored once");

    // HTML is never served as HTML from our origin.
    let page = b"<script>alert(1)</script>";
    let (p3, g3) = slot(&mut alice, "x.html", page.len(), "text/html")
        .await
        .unwrap();
    assert_eq!(
        http(h, "PUT", &p3, &[("Content-Type", "text/html")], page)
            .await
            .status,
        201
    );
    let r = http(h, "GET", &g3, &[], b"").await;
    assert_eq!(r.headers["content-type"], "application/octet-stream");
    assert!(r.headers["content-disposition"].starts_with("attachment"));

    // Too large: the XEP's error with the maximum. Over quota: refused.
    let e = slot(&mut alice, "big.bin", 5000, "application/octet-stream")
        .await
        .unwrap_err();
    assert!(
        xml(&e).contains("file-too-large")
            && xml(&e).contains("<max-file-size>1000</max-file-size>"),
        "{}",
        xml(&e)
    );
    let e = slot(&mut alice, "more.bin", 900, "application/octet-stream")
        .await
        .unwrap_err();
    assert_eq!(error_condition(&e).as_deref(), Some("resource-constraint"));
    let e = slot(&mut alice, "../evil", 10, "text/plain")
        .await
        .unwrap_err();
    assert_eq!(error_condition(&e).as_deref(), Some("bad-request"));
}

#[tokio::test]
async fn expired_put_urls_are_refused() {
    let s =
        TestServer::start_with(Backend::Sqlite, |c| c.modules.upload.put_valid_seconds = 0).await;
    s.add_user("alice", "pw").await;
    let mut alice = s.login("alice", "pw", "r").await;
    let (put, _) = slot(&mut alice, "a.txt", 3, "text/plain").await.unwrap();
    // Wait past the expiry second (a wait for a deadline, not a measurement).
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(
        http(
            s.http_addr(),
            "PUT",
            &put,
            &[("Content-Type", "text/plain")],
            b"abc"
        )
        .await
        .status,
        403
    );
}

#[tokio::test]
async fn metrics_are_served_in_prometheus_format() {
    let s = TestServer::start().await;
    s.add_user("alice", "pw").await;
    let mut alice = Client::online(s.addr(), "alice", "pw", "r").await;
    alice
        .send("<message to='alice@localhost/r' id='m'><body>x</body></message>")
        .await;
    alice.recv_until(|e| e.attr("id") == Some("m")).await;
    let r = http(s.http_addr(), "GET", "/metrics", &[], b"").await;
    assert_eq!(r.status, 200);
    let text = String::from_utf8(r.body).unwrap();
    assert!(
        text.contains("# TYPE xmppd_sessions gauge\nxmppd_sessions 1\n"),
        "{text}"
    );
    assert!(
        text.contains("xmppd_auth_total{result=\"success\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("xmppd_stanzas_in_total{type=\"message\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("xmppd_connections_open{kind=\"c2s\"} 1"),
        "{text}"
    );
}
