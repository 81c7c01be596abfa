//! `xmppd.toml`: every option has a default, so no file at all serves `localhost`.
//!
//! Unknown keys are rejected (`deny_unknown_fields`) so a typo is reported with
//! its file and line instead of being silently ignored.

use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Virtual hosts served by this server.
    pub hosts: Vec<String>,
    /// Where the SQLite database and generated certificates live.
    pub data_dir: PathBuf,
    /// tracing filter, e.g. "info" or "xmppd=debug,info".
    pub log_level: String,
    pub storage: StorageConfig,
    pub listeners: Vec<ListenerConfig>,
    pub certificates: Vec<CertificateConfig>,
    pub c2s: C2sConfig,
    pub registration: RegistrationConfig,
    pub limits: LimitsConfig,
    pub modules: ModulesConfig,
    pub http: HttpConfig,
    pub components: ComponentsConfig,
    pub s2s: S2sConfig,
}

/// Federation: server-to-server streams (RFC 6120, XEP-0220 dialback).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct S2sConfig {
    /// Accept and open server-to-server streams.
    pub enabled: bool,
    /// Where other servers connect (RFC 6120: port 5269).
    pub address: String,
    pub port: u16,
    /// A second listener where peers start with TLS (XEP-0368, advertised
    /// as `_xmpps-server._tcp` SRV records); none by default.
    pub direct_tls_port: Option<u16>,
    /// Nameservers ("ip" or "ip:port") for SRV lookups; empty: /etc/resolv.conf.
    pub nameservers: Vec<String>,
    /// Static routes, skipping DNS: remote domain → "host:port".
    pub routes: std::collections::BTreeMap<String, String>,
    /// Seconds to set up a stream (connect, TLS, authentication) before
    /// queued stanzas bounce with `remote-server-timeout`.
    pub connect_timeout: u64,
    /// Seconds without traffic before a stream is closed.
    pub idle_timeout: u64,
    /// Stanzas queued per remote domain; beyond it senders get an error.
    pub queue: usize,
    /// PEM files of the authorities trusted for peers' certificates; empty:
    /// the system bundle (/etc/ssl/certs/ca-certificates.crt).
    pub ca_files: Vec<PathBuf>,
    /// Accept only peers whose certificate is valid for their domain (SASL
    /// EXTERNAL); false also allows dialback (XEP-0220) where it is not.
    pub require_valid_certificates: bool,
}

impl Default for S2sConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            address: "0.0.0.0".into(),
            port: 5269,
            direct_tls_port: None,
            nameservers: Vec::new(),
            routes: Default::default(),
            connect_timeout: 20,
            idle_timeout: 600,
            queue: 1000,
            ca_files: Vec::new(),
            require_valid_certificates: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ComponentsConfig {
    /// Where XEP-0114 external components connect (no listener without services).
    pub address: String,
    pub port: u16,
    pub services: Vec<ComponentService>,
}

impl Default for ComponentsConfig {
    fn default() -> Self {
        Self {
            address: "127.0.0.1".into(),
            port: 5347,
            services: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComponentService {
    /// The component's domain, e.g. "gateway.example.org".
    pub domain: String,
    /// Shared secret of the XEP-0114 handshake.
    pub secret: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpListenerConfig {
    #[serde(default = "default_address")]
    pub address: String,
    pub port: u16,
    /// HTTPS with the same certificates as XMPP.
    #[serde(default)]
    pub tls: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Upload (XEP-0363), and later WebSocket/BOSH, are served here.
    pub listeners: Vec<HttpListenerConfig>,
    /// Base URL clients reach the listener at (for upload URLs). Default:
    /// https://<host>:<port> of the first TLS listener (else http://).
    pub public_url: Option<String>,
    /// Serve `/metrics` to any address, not only loopback.
    pub metrics_public: bool,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listeners: vec![
                HttpListenerConfig {
                    address: default_address(),
                    port: 5280,
                    tls: false,
                },
                HttpListenerConfig {
                    address: default_address(),
                    port: 5443,
                    tls: true,
                },
            ],
            public_url: None,
            metrics_public: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// `sqlite://path/to.db` or `postgres://user@host:port/db`. Default: SQLite under data_dir.
    pub url: Option<String>,
    /// Connection pool size (PostgreSQL; SQLite uses one writer).
    pub pool_size: Option<u32>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// Plain TCP upgraded with STARTTLS (RFC 6120 §5).
    Starttls,
    /// TLS from the first byte (XEP-0368).
    Direct,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    #[serde(default = "default_address")]
    pub address: String,
    pub port: u16,
    #[serde(default = "default_tls_mode")]
    pub tls: TlsMode,
}

fn default_address() -> String {
    "0.0.0.0".into()
}
fn default_tls_mode() -> TlsMode {
    TlsMode::Starttls
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateConfig {
    /// PEM certificate chain. The names it covers (SANs) select it by SNI.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct C2sConfig {
    /// Refuse authentication before TLS (RFC 6120 recommends it).
    pub require_tls: bool,
    /// Seconds of silence before the server pings a client (XEP-0199).
    pub ping_interval: u64,
    /// Seconds to wait for any traffic after that ping before dropping the client.
    pub ping_timeout: u64,
    /// Seconds allowed for a connection to authenticate and bind.
    pub login_timeout: u64,
    /// Seconds a stream-management session waits for its client to resume (XEP-0198).
    pub resume_timeout: u64,
}

impl Default for C2sConfig {
    fn default() -> Self {
        Self {
            require_tls: true,
            ping_interval: 120,
            ping_timeout: 60,
            login_timeout: 60,
            resume_timeout: 300,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RegistrationConfig {
    /// XEP-0077 in-band registration of new accounts. Password change is always allowed.
    pub open: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest stanza (bytes on the wire) before `policy-violation`.
    pub max_stanza_bytes: usize,
    /// Deepest element nesting inside a stanza.
    pub max_depth: usize,
    /// Stanzas queued for a session that does not read before it is cut off.
    pub outbound_queue: usize,
    /// Sustained bytes/s a client may send; excess is read more slowly (backpressure).
    pub c2s_rate_bytes: u64,
    /// Burst allowance for the rate above.
    pub c2s_burst_bytes: u64,
    /// Failed SASL attempts on one stream before it is closed.
    pub auth_attempts_per_stream: u32,
    /// Maximum roster size per account.
    pub max_roster_items: usize,
    /// Simultaneous connections from one IP address.
    pub max_connections_per_ip: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_stanza_bytes: 256 * 1024,
            max_depth: 64,
            outbound_queue: 2048,
            c2s_rate_bytes: 1024 * 1024,
            c2s_burst_bytes: 4 * 1024 * 1024,
            auth_attempts_per_stream: 5,
            max_roster_items: 5000,
            max_connections_per_ip: 20_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModulesConfig {
    /// Feature modules to load, by name (see xep/mod.rs).
    pub enabled: Vec<String>,
    pub version: VersionModuleConfig,
    pub offline: OfflineModuleConfig,
    pub muc: MucModuleConfig,
    pub upload: UploadModuleConfig,
    pub extdisco: ExtDiscoConfig,
    pub push: PushModuleConfig,
    pub fast: FastModuleConfig,
    /// XEP-0157 contact addresses, by kind: "abuse", "admin", "feedback",
    /// "sales", "security", "status", "support" → list of URIs.
    pub contact_addresses: std::collections::BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FastModuleConfig {
    /// Seconds a XEP-0484 login token stays valid after it is issued.
    pub token_lifetime: u64,
}

impl Default for FastModuleConfig {
    fn default() -> Self {
        Self {
            token_lifetime: 14 * 24 * 3600,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PushModuleConfig {
    /// Put the message body in notifications (most app servers do not need it).
    pub include_body: bool,
    /// Seconds a push-enabled session stays resumable (phones sleep long).
    pub resume_timeout: u64,
}

impl Default for PushModuleConfig {
    fn default() -> Self {
        Self {
            include_body: false,
            resume_timeout: 3600,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ExtDiscoConfig {
    /// STUN/TURN servers offered to clients (XEP-0215).
    pub services: Vec<ExternalService>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalService {
    /// "stun", "turn", "stuns" or "turns".
    #[serde(rename = "type")]
    pub kind: String,
    pub host: String,
    pub port: u16,
    /// "udp" or "tcp".
    #[serde(default = "default_transport")]
    pub transport: String,
    /// TURN REST shared secret: clients get time-limited credentials derived from it.
    pub secret: Option<String>,
    /// Seconds the credentials stay valid.
    #[serde(default = "default_ttl")]
    pub ttl: u64,
}

fn default_transport() -> String {
    "udp".into()
}
fn default_ttl() -> u64 {
    86_400
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UploadModuleConfig {
    /// The upload service is `<subdomain>.<host>`.
    pub subdomain: String,
    /// Largest file in bytes.
    pub max_file_size: u64,
    /// Bytes one account may have stored at once.
    pub quota_per_user: u64,
    /// Days files are kept.
    pub retention_days: u32,
    /// Seconds a slot's PUT URL stays valid.
    pub put_valid_seconds: u64,
}

impl Default for UploadModuleConfig {
    fn default() -> Self {
        Self {
            subdomain: "upload".into(),
            max_file_size: 100 * 1024 * 1024,
            quota_per_user: 1024 * 1024 * 1024,
            retention_days: 30,
            put_valid_seconds: 300,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MucModuleConfig {
    /// The service lives at `<subdomain>.<host>` for every host.
    pub subdomain: String,
    /// Rooms the service holds at most.
    pub max_rooms: usize,
    /// Rooms one account may own at most.
    pub max_rooms_per_user: usize,
    /// Occupants per room at most (room owners may set lower).
    pub max_occupants: usize,
    /// Messages of history kept per room and sent on join by default.
    pub history_length: usize,
}

impl Default for MucModuleConfig {
    fn default() -> Self {
        Self {
            subdomain: "conference".into(),
            max_rooms: 10_000,
            max_rooms_per_user: 100,
            max_occupants: 1000,
            history_length: 20,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OfflineModuleConfig {
    /// Messages kept per account; beyond this senders get an error.
    pub max_per_user: usize,
    /// Days a stored message waits before it is discarded.
    pub retention_days: u32,
}

impl Default for OfflineModuleConfig {
    fn default() -> Self {
        Self {
            max_per_user: 1000,
            retention_days: 30,
        }
    }
}

impl Default for ModulesConfig {
    fn default() -> Self {
        Self {
            enabled: crate::xep::ALL_MODULES
                .iter()
                .map(|s| s.to_string())
                .collect(),
            version: VersionModuleConfig::default(),
            offline: OfflineModuleConfig::default(),
            muc: MucModuleConfig::default(),
            upload: UploadModuleConfig::default(),
            extdisco: ExtDiscoConfig::default(),
            push: PushModuleConfig::default(),
            fast: FastModuleConfig::default(),
            contact_addresses: Default::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct VersionModuleConfig {
    /// Leave the operating system out of XEP-0092 answers.
    pub hide_os: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            hosts: vec!["localhost".into()],
            data_dir: PathBuf::from("./data"),
            log_level: "info".into(),
            storage: StorageConfig::default(),
            listeners: vec![
                ListenerConfig {
                    address: default_address(),
                    port: 5222,
                    tls: TlsMode::Starttls,
                },
                ListenerConfig {
                    address: default_address(),
                    port: 5223,
                    tls: TlsMode::Direct,
                },
            ],
            certificates: Vec::new(),
            c2s: C2sConfig::default(),
            registration: RegistrationConfig::default(),
            limits: LimitsConfig::default(),
            modules: ModulesConfig::default(),
            http: HttpConfig::default(),
            components: ComponentsConfig::default(),
            s2s: S2sConfig::default(),
        }
    }
}

/// A configuration mistake, explained with file and line where known.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl Config {
    /// Load from `path`; `None` means defaults (no file).
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let Some(path) = path else {
            let c = Config::default();
            c.validate(None)?;
            return Ok(c);
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("{}: cannot read: {e}", path.display())))?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let mut cfg: Config = toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            match line {
                Some(l) => ConfigError(format!("{}:{l}: {}", path.display(), e.message())),
                None => ConfigError(format!("{}: {}", path.display(), e.message())),
            }
        })?;
        // Relative paths in the file are relative to the working directory, like the CLI's.
        cfg.hosts = cfg.hosts.iter().map(|h| h.to_lowercase()).collect();
        cfg.validate(Some((text, path)))?;
        Ok(cfg)
    }

    fn validate(&self, src: Option<(&str, &Path)>) -> Result<(), ConfigError> {
        let at = |key: &str| -> String {
            match src {
                Some((text, path)) => {
                    let line = text
                        .lines()
                        .position(|l| l.trim_start().starts_with(key))
                        .map(|i| i + 1);
                    match line {
                        Some(l) => format!("{}:{l}", path.display()),
                        None => path.display().to_string(),
                    }
                }
                None => "defaults".into(),
            }
        };
        if self.hosts.is_empty() {
            return Err(ConfigError(format!(
                "{}: `hosts` must name at least one domain",
                at("hosts")
            )));
        }
        for h in &self.hosts {
            if jid::BareJid::new(h)
                .map(|j| j.node().is_some())
                .unwrap_or(true)
            {
                return Err(ConfigError(format!(
                    "{}: `{h}` is not a valid domain name",
                    at("hosts")
                )));
            }
        }
        if let Some(url) = &self.storage.url
            && !(url.starts_with("sqlite:")
                || url.starts_with("postgres://")
                || url.starts_with("postgresql://"))
        {
            return Err(ConfigError(format!(
                "{}: storage url must start with sqlite: or postgres:// (got `{url}`)",
                at("url")
            )));
        }
        for m in &self.modules.enabled {
            if !crate::xep::ALL_MODULES.contains(&m.as_str()) {
                return Err(ConfigError(format!(
                    "{}: unknown module `{m}`; known modules: {}",
                    at("enabled"),
                    crate::xep::ALL_MODULES.join(", ")
                )));
            }
        }
        let mut seen = std::collections::HashSet::new();
        for l in &self.listeners {
            if !seen.insert((l.address.clone(), l.port)) {
                return Err(ConfigError(format!(
                    "{}: two listeners on {}:{}",
                    at("port"),
                    l.address,
                    l.port
                )));
            }
        }
        if self.limits.max_stanza_bytes < 10_000 {
            return Err(ConfigError(format!(
                "{}: max_stanza_bytes must be at least 10000 (RFC 6120 §13.12)",
                at("max_stanza_bytes")
            )));
        }
        if self.limits.max_depth < 8 {
            return Err(ConfigError(format!(
                "{}: max_depth must be at least 8",
                at("max_depth")
            )));
        }
        Ok(())
    }

    /// The storage URL, defaulting to SQLite under the data directory.
    pub fn storage_url(&self) -> String {
        self.storage
            .url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", self.data_dir.join("xmppd.db").display()))
    }

    pub fn serves(&self, domain: &str) -> bool {
        self.hosts.iter().any(|h| h == domain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_is_valid_and_errors_name_the_line() {
        let text = include_str!("../xmppd.toml.example");
        let cfg = Config::parse(text, Path::new("xmppd.toml.example")).unwrap();
        assert_eq!(cfg.hosts, vec!["localhost".to_string()]);
        let e = Config::parse(
            "hosts = [\"a.example\"]\n\n[limits]\nmax_stanza_bytez = 1\n",
            Path::new("x.toml"),
        )
        .unwrap_err();
        assert!(e.0.starts_with("x.toml:4:"), "{}", e.0);
        let e =
            Config::parse("[modules]\nenabled = [\"nope\"]\n", Path::new("y.toml")).unwrap_err();
        assert!(
            e.0.contains("y.toml:2") && e.0.contains("unknown module"),
            "{}",
            e.0
        );
        let e = Config::parse("[storage]\nurl = \"mysql://x\"\n", Path::new("z.toml")).unwrap_err();
        assert!(e.0.contains("z.toml:2"), "{}", e.0);
        assert!(Config::load(None).unwrap().serves("localhost"));
    }
}
