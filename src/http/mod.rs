//! The HTTP listener(s): XEP-0363 upload and `/metrics` today; WebSocket and
//! BOSH will join the same router. Plain HTTP and HTTPS (same certificates as
//! XMPP, ALPN http/1.1) share one hyper connection loop.

use crate::server::Server;
use axum::Router;
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tower::ServiceExt;

/// Whether the HTTP connection is TLS (inserted per connection by `serve`).
#[derive(Clone, Copy)]
pub struct Secure(pub bool);

pub fn router(server: Arc<Server>) -> Router {
    let mut r = Router::new()
        .route("/metrics", get(metrics))
        .route("/xmpp-websocket", axum::routing::any(websocket))
        .route(
            "/http-bind",
            axum::routing::post(crate::xep::bosh::request).options(crate::xep::bosh::options),
        )
        .route("/.well-known/host-meta", get(host_meta))
        .route("/.well-known/host-meta.json", get(host_meta_json));
    if !server.upload.domains().is_empty() {
        use crate::xep::upload;
        r = r.route(
            "/upload/{slot}/{name}",
            get(upload::get)
                .head(upload::get)
                .put(upload::put)
                .options(upload::options),
        );
    }
    r.with_state(server)
}

async fn metrics(
    State(server): State<Arc<Server>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> Response {
    if !server.config.http.metrics_public && !peer.ip().is_loopback() {
        return (StatusCode::FORBIDDEN, "metrics are served to loopback only").into_response();
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        crate::metrics::render(&server),
    )
        .into_response()
}

/// RFC 7395: upgrade to XMPP over WebSocket (subprotocol `xmpp`). Treated as
/// encrypted when the HTTP connection is TLS, or from loopback (a local proxy
/// or development).
async fn websocket(
    State(server): State<Arc<Server>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    axum::Extension(Secure(tls)): axum::Extension<Secure>,
    ws: axum::extract::ws::WebSocketUpgrade,
) -> Response {
    let secure = tls || peer.ip().is_loopback();
    let max = server.config.limits.max_stanza_bytes + 1024;
    ws.protocols(["xmpp"])
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| crate::c2s::serve_websocket(server, socket, peer, secure))
        .into_response()
}

/// The WebSocket endpoint clients should use, derived from the public URL.
fn websocket_url(server: &Server) -> Option<String> {
    let base = server
        .upload
        .base_url
        .get()
        .cloned()
        .or_else(|| server.config.http.public_url.clone())?;
    let ws = base
        .replacen("https://", "wss://", 1)
        .replacen("http://", "ws://", 1);
    Some(format!("{}/xmpp-websocket", ws.trim_end_matches('/')))
}

/// XEP-0156: how web clients find the WebSocket endpoint.
async fn host_meta(State(server): State<Arc<Server>>) -> Response {
    let mut xrd = String::from(
        "<?xml version='1.0' encoding='utf-8'?>\n<XRD xmlns='http://docs.oasis-open.org/ns/xri/xrd-1.0'>\n",
    );
    if let Some(url) = websocket_url(&server) {
        xrd.push_str(&format!(
            "  <Link rel='urn:xmpp:alt-connections:websocket' href='{}'/>\n",
            crate::xml::escape(&url)
        ));
    }
    xrd.push_str("</XRD>\n");
    (
        [
            (axum::http::header::CONTENT_TYPE, "application/xrd+xml"),
            (axum::http::header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
        ],
        xrd,
    )
        .into_response()
}

async fn host_meta_json(State(server): State<Arc<Server>>) -> Response {
    let links = websocket_url(&server)
        .map(|u| {
            format!(
                "{{\"rel\":\"urn:xmpp:alt-connections:websocket\",\"href\":\"{}\"}}",
                u.replace('"', "%22")
            )
        })
        .unwrap_or_default();
    (
        [
            (axum::http::header::CONTENT_TYPE, "application/json"),
            (axum::http::header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
        ],
        format!("{{\"links\":[{links}]}}"),
    )
        .into_response()
}

/// Accept HTTP connections on `listener` until the task is aborted.
pub async fn serve(server: Arc<Server>, listener: TcpListener, tls: bool) {
    let router = router(server.clone());
    let acceptor = tls.then(|| {
        let mut cfg = (*server.tls).clone();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        // No channel binding over HTTPS: do not capture exporter secrets.
        cfg.key_log = Arc::new(rustls::NoKeyLog);
        tokio_rustls::TlsAcceptor::from(Arc::new(cfg))
    });
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "HTTP accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let router = router.clone();
        let acceptor = acceptor.clone();
        let server = server.clone();
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let svc = hyper::service::service_fn(
                move |mut req: hyper::Request<hyper::body::Incoming>| {
                    crate::metrics::Metrics::inc(&server.metrics.http_requests);
                    req.extensions_mut().insert(ConnectInfo(peer));
                    req.extensions_mut().insert(Secure(tls));
                    router.clone().oneshot(req.map(axum::body::Body::new))
                },
            );
            let http = hyper::server::conn::http1::Builder::new();
            let result = match acceptor {
                Some(a) => {
                    match tokio::time::timeout(std::time::Duration::from_secs(15), a.accept(tcp))
                        .await
                    {
                        Ok(Ok(t)) => {
                            http.serve_connection(TokioIo::new(t), svc)
                                .with_upgrades()
                                .await
                        }
                        _ => return,
                    }
                }
                None => {
                    http.serve_connection(TokioIo::new(tcp), svc)
                        .with_upgrades()
                        .await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "HTTP connection ended with an error");
            }
        });
    }
}
