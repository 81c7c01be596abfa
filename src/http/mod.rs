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

pub fn router(server: Arc<Server>) -> Router {
    let mut r = Router::new().route("/metrics", get(metrics));
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

/// Accept HTTP connections on `listener` until the task is aborted.
pub async fn serve(server: Arc<Server>, listener: TcpListener, tls: bool) {
    let router = router(server.clone());
    let acceptor = tls.then(|| {
        let mut cfg = (*server.tls).clone();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
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
