//! XEP-0363 HTTP File Upload as a component on `upload.<host>`.
//!
//! A slot request returns a PUT URL carrying an expiring HMAC token bound to
//! the slot, its size and content type, and a GET URL that is a capability
//! (unguessable slot id). Files are stored once per content under
//! `data_dir/uploads/files/<sha256>`; every slot keeps its own URL. Nothing
//! uploaded is ever served inline as an active type from our origin.

use crate::server::Server;
use crate::stanza::{error_reply, iq_result};
use crate::storage::{UploadSlot, now_unix};
use crate::util::Bare;
use crate::xml::{BuilderExt, el, ns};
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use hmac::{KeyInit, Mac};
use http_body_util::BodyExt;
use jid::FullJid;
use minidom::Element;
use sha2::Digest;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

pub const NS: &str = "urn:xmpp:http:upload:0";

pub struct UploadService {
    domains: Vec<String>,
    secret: Vec<u8>,
    dir: PathBuf,
    /// Where clients reach our HTTP listener; set once listeners are bound.
    pub base_url: OnceLock<String>,
}

impl UploadService {
    pub fn new(config: &crate::config::Config) -> anyhow::Result<Self> {
        let enabled = config.modules.enabled.iter().any(|m| m == "upload");
        let dir = config.data_dir.join("uploads");
        let mut secret = Vec::new();
        if enabled {
            std::fs::create_dir_all(dir.join("files"))?;
            std::fs::create_dir_all(dir.join("tmp"))?;
            // The token key survives restarts so issued URLs stay valid.
            let key_file = dir.join("token.key");
            secret = match std::fs::read(&key_file) {
                Ok(k) if k.len() == 32 => k,
                _ => {
                    let k = crate::random::bytes(32);
                    std::fs::write(&key_file, &k)?;
                    k
                }
            };
        }
        Ok(UploadService {
            domains: if enabled {
                config
                    .hosts
                    .iter()
                    .map(|h| format!("{}.{h}", config.modules.upload.subdomain))
                    .collect()
            } else {
                Vec::new()
            },
            secret,
            dir,
            base_url: OnceLock::new(),
        })
    }

    pub fn domains(&self) -> &[String] {
        &self.domains
    }

    pub fn handles(&self, domain: &str) -> bool {
        self.domains.iter().any(|d| d == domain)
    }

    fn token(&self, slot: &str, size: i64, content_type: &str, expires: i64) -> String {
        let mut m = hmac::Hmac::<sha2::Sha256>::new_from_slice(&self.secret).expect("key");
        m.update(format!("{slot}\0{size}\0{content_type}\0{expires}").as_bytes());
        B64URL.encode(m.finalize().into_bytes())
    }

    fn file(&self, sha: &str) -> PathBuf {
        self.dir.join("files").join(sha)
    }

    /// IQs to the service: disco and slot requests.
    pub async fn handle_iq(
        &self,
        server: &Server,
        iq: &Element,
        from: &FullJid,
    ) -> Option<Element> {
        if !matches!(iq.attr("type"), Some("get" | "set")) {
            return None;
        }
        let payload = iq.children().next()?;
        let cfg = &server.config.modules.upload;
        if payload.is("query", ns::DISCO_INFO) {
            let max = cfg.max_file_size.to_string();
            let form = el("x", ns::DATA_FORMS)
                .a("type", "result")
                .c(el("field", ns::DATA_FORMS)
                    .a("var", "FORM_TYPE")
                    .a("type", "hidden")
                    .c(el("value", ns::DATA_FORMS).t(NS).build())
                    .build())
                .c(el("field", ns::DATA_FORMS)
                    .a("var", "max-file-size")
                    .c(el("value", ns::DATA_FORMS).t(&max).build())
                    .build())
                .build();
            let q = el("query", ns::DISCO_INFO)
                .c(el("identity", ns::DISCO_INFO)
                    .a("category", "store")
                    .a("type", "file")
                    .a("name", "HTTP File Upload")
                    .build())
                .c(el("feature", ns::DISCO_INFO).a("var", NS).build())
                .c(el("feature", ns::DISCO_INFO)
                    .a("var", ns::DISCO_INFO)
                    .build())
                .c(form)
                .build();
            return Some(iq_result(iq, Some(q)));
        }
        if payload.is("query", ns::DISCO_ITEMS) {
            return Some(iq_result(iq, Some(el("query", ns::DISCO_ITEMS).build())));
        }
        if !payload.is("request", NS) || iq.attr("type") != Some("get") {
            return error_reply(iq, "service-unavailable", None);
        }
        if !server.config.serves(from.domain().as_str()) {
            return error_reply(iq, "forbidden", None);
        }
        let filename = payload.attr("filename").unwrap_or("").trim().to_string();
        let size: i64 = match payload.attr("size").and_then(|s| s.parse().ok()) {
            Some(s) if s > 0 => s,
            _ => return error_reply(iq, "bad-request", Some("size must be a positive number")),
        };
        if filename.is_empty()
            || filename.contains('/')
            || filename.contains('\\')
            || filename.len() > 255
        {
            return error_reply(iq, "bad-request", Some("invalid filename"));
        }
        if size as u64 > cfg.max_file_size {
            // XEP-0363 §5: file-too-large with the maximum.
            let mut r = error_reply(iq, "not-acceptable", Some("file too large"))?;
            if let Some(e) = r.get_child_mut("error", ns::CLIENT) {
                e.append_child(
                    el("file-too-large", NS)
                        .c(el("max-file-size", NS)
                            .t(&cfg.max_file_size.to_string())
                            .build())
                        .build(),
                );
            }
            return Some(r);
        }
        let owner = from.bare();
        let used = server
            .storage
            .uploads
            .upload_usage(owner.as_str())
            .await
            .unwrap_or(i64::MAX);
        if used.saturating_add(size) as u64 > cfg.quota_per_user {
            return error_reply(iq, "resource-constraint", Some("upload quota exceeded"));
        }
        let content_type = payload
            .attr("content-type")
            .filter(|c| c.len() < 128 && c.contains('/') && !c.contains(['\r', '\n']))
            .unwrap_or("application/octet-stream")
            .to_ascii_lowercase();
        let slot = UploadSlot {
            id: B64URL.encode(crate::random::bytes(18)),
            owner: owner.to_string(),
            filename: filename.clone(),
            size,
            content_type: content_type.clone(),
            sha256: String::new(),
            created_at: now_unix(),
        };
        if let Err(e) = server.storage.uploads.create_slot(&slot).await {
            tracing::error!(error = %e, "creating upload slot failed");
            return error_reply(iq, "internal-server-error", None);
        }
        let base = self.base_url.get().cloned().unwrap_or_default();
        let get = format!("{base}/upload/{}/{}", slot.id, url_encode(&filename));
        let expires = now_unix() + cfg.put_valid_seconds as i64;
        let put = format!(
            "{get}?e={expires}&t={}",
            self.token(&slot.id, size, &content_type, expires)
        );
        let answer = el("slot", NS)
            .c(el("put", NS).a("url", put).build())
            .c(el("get", NS).a("url", get).build())
            .build();
        Some(iq_result(iq, Some(answer)))
    }

    /// Delete expired slots and files nobody references any more, hourly.
    pub fn spawn_cleanup(server: Arc<Server>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(3600));
            loop {
                tick.tick().await;
                let before =
                    now_unix() - server.config.modules.upload.retention_days as i64 * 86_400;
                match server.storage.uploads.expire_slots(before).await {
                    Ok(orphans) => {
                        for sha in orphans {
                            let _ = tokio::fs::remove_file(server.upload.file(&sha)).await;
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "upload cleanup failed"),
                }
            }
        })
    }
}

fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[derive(serde::Deserialize)]
pub struct PutQuery {
    e: Option<i64>,
    t: Option<String>,
}

fn status(code: StatusCode, text: &str) -> Response {
    (code, cors(), text.to_string()).into_response()
}

fn cors() -> [(header::HeaderName, &'static str); 4] {
    [
        (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
        (
            header::ACCESS_CONTROL_ALLOW_METHODS,
            "GET, HEAD, PUT, OPTIONS",
        ),
        (
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            "Content-Type, Authorization",
        ),
        (
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            "Content-Length, Content-Range, Accept-Ranges",
        ),
    ]
}

pub async fn options() -> Response {
    (StatusCode::OK, cors()).into_response()
}

/// PUT: the upload itself, refused unless everything matches the slot.
pub async fn put(
    State(server): State<Arc<Server>>,
    Path((slot_id, name)): Path<(String, String)>,
    Query(q): Query<PutQuery>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let up = &server.upload;
    let (Some(expires), Some(token)) = (q.e, q.t) else {
        return status(StatusCode::FORBIDDEN, "missing token");
    };
    let slot = match server.storage.uploads.slot(&slot_id).await {
        Ok(Some(s)) if s.filename == name => s,
        Ok(_) => return status(StatusCode::NOT_FOUND, "no such slot"),
        Err(_) => return status(StatusCode::INTERNAL_SERVER_ERROR, "storage error"),
    };
    let expected = up.token(&slot.id, slot.size, &slot.content_type, expires);
    if !bool::from(subtle::ConstantTimeEq::ct_eq(
        expected.as_bytes(),
        token.as_bytes(),
    )) {
        return status(StatusCode::FORBIDDEN, "bad token");
    }
    if expires < now_unix() {
        return status(StatusCode::FORBIDDEN, "slot expired");
    }
    if !slot.sha256.is_empty() {
        return status(StatusCode::CONFLICT, "already uploaded");
    }
    let declared_len = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i64>().ok());
    if declared_len != Some(slot.size) {
        return status(
            StatusCode::PAYLOAD_TOO_LARGE,
            "Content-Length must equal the slot size",
        );
    }
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.to_ascii_lowercase());
    if ctype.is_some_and(|c| c != slot.content_type) {
        return status(
            StatusCode::BAD_REQUEST,
            "Content-Type differs from the slot",
        );
    }
    // Stream to a temporary file while hashing; never more than the slot size.
    let tmp = up.dir.join("tmp").join(&slot.id);
    let mut file = match tokio::fs::File::create(&tmp).await {
        Ok(f) => f,
        Err(_) => return status(StatusCode::INTERNAL_SERVER_ERROR, "cannot store"),
    };
    let mut hasher = sha2::Sha256::new();
    let mut received: i64 = 0;
    let mut body = body;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            let _ = tokio::fs::remove_file(&tmp).await;
            return status(StatusCode::BAD_REQUEST, "upload interrupted");
        };
        if let Ok(data) = frame.into_data() {
            received += data.len() as i64;
            if received > slot.size {
                let _ = tokio::fs::remove_file(&tmp).await;
                return status(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "more data than the slot allows",
                );
            }
            hasher.update(&data);
            if file.write_all(&data).await.is_err() {
                let _ = tokio::fs::remove_file(&tmp).await;
                return status(StatusCode::INTERNAL_SERVER_ERROR, "cannot store");
            }
        }
    }
    if received != slot.size {
        let _ = tokio::fs::remove_file(&tmp).await;
        return status(StatusCode::BAD_REQUEST, "less data than the slot size");
    }
    let _ = file.sync_all().await;
    drop(file);
    let sha: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let dest = up.file(&sha);
    if dest.exists() {
        // Same content already stored: keep one copy.
        let _ = tokio::fs::remove_file(&tmp).await;
    } else if tokio::fs::rename(&tmp, &dest).await.is_err() {
        return status(StatusCode::INTERNAL_SERVER_ERROR, "cannot store");
    }
    match server.storage.uploads.complete_slot(&slot.id, &sha).await {
        Ok(true) => {
            crate::metrics::Metrics::inc(&server.metrics.uploads);
            server
                .metrics
                .upload_bytes
                .fetch_add(slot.size as u64, std::sync::atomic::Ordering::Relaxed);
            status(StatusCode::CREATED, "")
        }
        Ok(false) => status(StatusCode::CONFLICT, "already uploaded"),
        Err(_) => status(StatusCode::INTERNAL_SERVER_ERROR, "storage error"),
    }
}

/// Types a browser may show inline; anything else is offered as a download.
fn inline_type(t: &str) -> bool {
    (t.starts_with("image/") && t != "image/svg+xml")
        || t.starts_with("audio/")
        || t.starts_with("video/")
        || t == "text/plain"
        || t == "application/pdf"
}

/// GET/HEAD: the file, with Range support; the URL itself is the capability.
pub async fn get(
    State(server): State<Arc<Server>>,
    Path((slot_id, name)): Path<(String, String)>,
    method: axum::http::Method,
    headers: HeaderMap,
) -> Response {
    let slot = match server.storage.uploads.slot(&slot_id).await {
        Ok(Some(s)) if s.filename == name && !s.sha256.is_empty() => s,
        Ok(_) => return status(StatusCode::NOT_FOUND, "not found"),
        Err(_) => return status(StatusCode::INTERNAL_SERVER_ERROR, "storage error"),
    };
    let Ok(mut file) = tokio::fs::File::open(server.upload.file(&slot.sha256)).await else {
        return status(StatusCode::NOT_FOUND, "not found");
    };
    let len = slot.size as u64;
    let (start, end, partial) = match headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(|r| parse_range(r, len))
    {
        None => (0, len.saturating_sub(1), false),
        Some(Some((s, e))) => (s, e, true),
        Some(None) => {
            let mut r = status(StatusCode::RANGE_NOT_SATISFIABLE, "bad range");
            r.headers_mut().insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes */{len}")).unwrap(),
            );
            return r;
        }
    };
    let count = if len == 0 { 0 } else { end - start + 1 };
    let (ctype, disposition) = if inline_type(&slot.content_type) {
        (slot.content_type.clone(), "inline")
    } else {
        ("application/octet-stream".to_string(), "attachment")
    };
    let mut builder = Response::builder()
        .status(if partial {
            StatusCode::PARTIAL_CONTENT
        } else {
            StatusCode::OK
        })
        .header(header::CONTENT_TYPE, ctype)
        .header(header::CONTENT_LENGTH, count)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(
            header::CONTENT_DISPOSITION,
            format!(
                "{disposition}; filename*=UTF-8''{}",
                url_encode(&slot.filename)
            ),
        )
        .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
        .header(
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; sandbox",
        )
        .header(
            header::CACHE_CONTROL,
            "private, max-age=31536000, immutable",
        );
    for (k, v) in cors() {
        builder = builder.header(k, v);
    }
    if partial {
        builder = builder.header(header::CONTENT_RANGE, format!("bytes {start}-{end}/{len}"));
    }
    if method == axum::http::Method::HEAD || count == 0 {
        return builder.body(Body::empty()).unwrap();
    }
    if file.seek(std::io::SeekFrom::Start(start)).await.is_err() {
        return status(StatusCode::INTERNAL_SERVER_ERROR, "read error");
    }
    let stream = tokio_util::io::ReaderStream::new(file.take(count));
    builder.body(Body::from_stream(stream)).unwrap()
}

/// One `bytes=` range; `None` when unsatisfiable.
fn parse_range(h: &str, len: u64) -> Option<(u64, u64)> {
    let spec = h.strip_prefix("bytes=")?;
    if spec.contains(',') || len == 0 {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (start, end) = match (a.trim(), b.trim()) {
        ("", suffix) => {
            let n: u64 = suffix.parse().ok()?;
            if n == 0 {
                return None;
            }
            (len.saturating_sub(n), len - 1)
        }
        (s, "") => (s.parse().ok()?, len - 1),
        (s, e) => (s.parse().ok()?, e.parse::<u64>().ok()?.min(len - 1)),
    };
    (start <= end && start < len).then_some((start, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Some((0, 9)));
        assert_eq!(parse_range("bytes=90-", 100), Some((90, 99)));
        assert_eq!(parse_range("bytes=-10", 100), Some((90, 99)));
        assert_eq!(parse_range("bytes=50-500", 100), Some((50, 99)));
        assert_eq!(parse_range("bytes=100-", 100), None);
        assert_eq!(parse_range("bytes=5-2", 100), None);
        assert_eq!(parse_range("bytes=0-1,3-4", 100), None);
        assert_eq!(url_encode("a b/ä.png"), "a%20b%2F%C3%A4.png");
    }
}
