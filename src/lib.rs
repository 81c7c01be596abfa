//! xmppd: a native XMPP server. See docs/ARCHITECTURE.md for the map.

pub mod c2s;
pub mod component;
pub mod config;
pub mod http;
pub mod im;
pub mod metrics;
pub mod net;
pub mod outbox;
pub mod random;
pub mod router;
pub mod s2s;
pub mod sasl;
pub mod server;
pub mod stanza;
pub mod storage;
pub mod tls;
pub mod tls_exporter;
pub mod tls_stream;
pub mod util;
pub mod xml;

#[path = "../xep/mod.rs"]
pub mod xep;

pub use config::Config;
pub use server::{Running, Server, start};
