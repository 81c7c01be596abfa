//! Counters for `/metrics` (Prometheus text format). Plain atomics: cheap
//! enough to bump on the hot path.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

#[derive(Default)]
pub struct Metrics {
    pub connections_opened: AtomicU64,
    pub connections_open: AtomicU64,
    pub websocket_open: AtomicU64,
    pub websocket_opened: AtomicU64,
    pub bosh_open: AtomicU64,
    pub bosh_opened: AtomicU64,
    /// Storage writes on the message path (archive, offline): count and total µs.
    pub storage_writes: AtomicU64,
    pub storage_write_micros: AtomicU64,
    pub messages_in: AtomicU64,
    pub presences_in: AtomicU64,
    pub iqs_in: AtomicU64,
    pub stanzas_out: AtomicU64,
    pub auth_success: AtomicU64,
    pub auth_failure: AtomicU64,
    pub offline_stored: AtomicU64,
    pub archived: AtomicU64,
    pub storage_errors: AtomicU64,
    pub uploads: AtomicU64,
    pub upload_bytes: AtomicU64,
    pub http_requests: AtomicU64,
    /// Server-to-server streams authenticated, by direction and method.
    pub s2s_in_external: AtomicU64,
    pub s2s_in_dialback: AtomicU64,
    pub s2s_out_external: AtomicU64,
    pub s2s_out_dialback: AtomicU64,
}

impl Metrics {
    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Relaxed);
    }

    /// Record how long a storage write took.
    pub fn storage_write(&self, started: std::time::Instant) {
        self.storage_writes.fetch_add(1, Relaxed);
        self.storage_write_micros
            .fetch_add(started.elapsed().as_micros() as u64, Relaxed);
    }

    pub fn stanza_in(&self, name: &str) {
        match name {
            "message" => Self::inc(&self.messages_in),
            "presence" => Self::inc(&self.presences_in),
            _ => Self::inc(&self.iqs_in),
        }
    }
}

/// Render everything, with the gauges computed now.
pub fn render(server: &crate::server::Server) -> String {
    let m = &server.metrics;
    let mut out = String::with_capacity(2048);
    let mut put = |name: &str, kind: &str, help: &str, lines: &[(&str, u64)]| {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        for (labels, v) in lines {
            if labels.is_empty() {
                out.push_str(&format!("{name} {v}\n"));
            } else {
                out.push_str(&format!("{name}{{{labels}}} {v}\n"));
            }
        }
    };
    let g = |c: &AtomicU64| c.load(Relaxed);
    put(
        "xmppd_uptime_seconds",
        "gauge",
        "Seconds since start.",
        &[("", server.started.elapsed().as_secs())],
    );
    put(
        "xmppd_connections_open",
        "gauge",
        "Open client connections.",
        &[
            ("kind=\"c2s\"", g(&m.connections_open)),
            ("kind=\"websocket\"", g(&m.websocket_open)),
            ("kind=\"bosh\"", g(&m.bosh_open)),
        ],
    );
    put(
        "xmppd_connections_total",
        "counter",
        "Client connections accepted.",
        &[
            ("kind=\"c2s\"", g(&m.connections_opened)),
            ("kind=\"websocket\"", g(&m.websocket_opened)),
            ("kind=\"bosh\"", g(&m.bosh_opened)),
        ],
    );
    put(
        "xmppd_sessions",
        "gauge",
        "Bound client sessions.",
        &[("", server.registry.count())],
    );
    let queued: u64 = server
        .registry
        .all()
        .iter()
        .map(|h| h.queued() as u64)
        .sum();
    put(
        "xmppd_queued_stanzas",
        "gauge",
        "Stanzas waiting in session queues.",
        &[("", queued)],
    );
    put(
        "xmppd_s2s_authenticated_total",
        "counter",
        "Server-to-server streams (or domains on them) authenticated.",
        &[
            (
                "direction=\"in\",method=\"external\"",
                g(&m.s2s_in_external),
            ),
            (
                "direction=\"in\",method=\"dialback\"",
                g(&m.s2s_in_dialback),
            ),
            (
                "direction=\"out\",method=\"external\"",
                g(&m.s2s_out_external),
            ),
            (
                "direction=\"out\",method=\"dialback\"",
                g(&m.s2s_out_dialback),
            ),
        ],
    );
    put(
        "xmppd_stanzas_in_total",
        "counter",
        "Stanzas received from clients.",
        &[
            ("type=\"message\"", g(&m.messages_in)),
            ("type=\"presence\"", g(&m.presences_in)),
            ("type=\"iq\"", g(&m.iqs_in)),
        ],
    );
    put(
        "xmppd_stanzas_out_total",
        "counter",
        "Stanzas written to clients.",
        &[("", g(&m.stanzas_out))],
    );
    put(
        "xmppd_auth_total",
        "counter",
        "SASL authentications.",
        &[
            ("result=\"success\"", g(&m.auth_success)),
            ("result=\"failure\"", g(&m.auth_failure)),
        ],
    );
    put(
        "xmppd_offline_stored_total",
        "counter",
        "Messages stored for offline users.",
        &[("", g(&m.offline_stored))],
    );
    put(
        "xmppd_storage_writes_total",
        "counter",
        "Storage writes on the message path (archive, offline).",
        &[("", g(&m.storage_writes))],
    );
    put(
        "xmppd_storage_write_microseconds_total",
        "counter",
        "Time spent in those writes.",
        &[("", g(&m.storage_write_micros))],
    );
    put(
        "xmppd_storage_errors_total",
        "counter",
        "Failed storage operations.",
        &[("", g(&m.storage_errors))],
    );
    put(
        "xmppd_muc_rooms",
        "gauge",
        "Group chat rooms in memory.",
        &[("", server.muc.room_count() as u64)],
    );
    put(
        "xmppd_uploads_total",
        "counter",
        "Files uploaded (XEP-0363).",
        &[("", g(&m.uploads))],
    );
    put(
        "xmppd_upload_bytes_total",
        "counter",
        "Bytes uploaded.",
        &[("", g(&m.upload_bytes))],
    );
    put(
        "xmppd_http_requests_total",
        "counter",
        "HTTP requests served.",
        &[("", g(&m.http_requests))],
    );
    out
}
