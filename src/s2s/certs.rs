//! Certificates between servers (RFC 6120 §13.7.2, RFC 6125, XEP-0178).
//!
//! Both ends of a server stream present certificates: we ask incoming peers
//! for one and present ours when we connect. The TLS handshake accepts any
//! chain (so a peer with a self-signed certificate can still fall back to
//! dialback); whether a chain is valid *for a domain* — signed by a trusted
//! authority, in date, with the domain among its DNS names — is decided here
//! afterwards, when the domain is known: it decides whether SASL EXTERNAL is
//! offered or used, and, under `require_valid_certificates`, whether the
//! peer is accepted at all.

use crate::config::S2sConfig;
use crate::tls::{AnyCertificate, Certificates};
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::CertifiedKey;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// ALPN protocol id of server-to-server streams (XEP-0368).
pub const ALPN_XMPP_SERVER: &[u8] = b"xmpp-server";

/// Where Debian, Fedora and Alpine keep the system's trusted authorities.
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

/// TLS settings for server streams, built once per server.
pub struct PeerTls {
    /// Checks chains against the trusted authorities; `None` trusts nobody.
    verifier: Option<Arc<rustls::client::WebPkiServerVerifier>>,
    /// Incoming streams: our certificates, client certificates requested.
    pub server: Arc<rustls::ServerConfig>,
    certificates: Arc<Certificates>,
    /// Outgoing streams, per local domain (each presents its own certificate).
    clients: Mutex<HashMap<String, Arc<rustls::ClientConfig>>>,
}

impl PeerTls {
    pub fn new(cfg: &S2sConfig, certificates: Arc<Certificates>) -> PeerTls {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let roots = trusted_roots(cfg);
        let verifier = if roots.is_empty() {
            None
        } else {
            rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots),
                provider.clone(),
            )
            .build()
            .map_err(|e| tracing::warn!(error = %e, "s2s: no certificate verifier"))
            .ok()
        };
        let mut server = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .expect("TLS protocol versions")
            .with_client_cert_verifier(Arc::new(AnyClientCertificate))
            .with_cert_resolver(certificates.clone());
        server.alpn_protocols = vec![ALPN_XMPP_SERVER.to_vec()];
        server.send_half_rtt_data = false;
        PeerTls {
            verifier,
            server: Arc::new(server),
            certificates,
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `chain` (end entity first) is valid for `domain` now.
    pub fn valid_for(&self, chain: Option<&[CertificateDer<'_>]>, domain: &str) -> bool {
        let (Some(verifier), Some((leaf, rest))) =
            (&self.verifier, chain.and_then(|c| c.split_first()))
        else {
            return false;
        };
        let Ok(name) = ServerName::try_from(domain.to_string()) else {
            return false;
        };
        match verifier.verify_server_cert(leaf, rest, &name, &[], UnixTime::now()) {
            Ok(_) => true,
            Err(e) => {
                tracing::debug!(domain, error = %e, "s2s: certificate not valid for the domain");
                false
            }
        }
    }

    /// TLS client settings for streams from `local`: our certificate for it.
    pub fn client(&self, local: &str) -> Arc<rustls::ClientConfig> {
        let mut clients = self.clients.lock().unwrap();
        if let Some(c) = clients.get(local) {
            return c.clone();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("default TLS versions")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate))
            .with_client_cert_resolver(Arc::new(OurCertificate(self.certificates.pick(local))));
        cfg.alpn_protocols = vec![ALPN_XMPP_SERVER.to_vec()];
        let cfg = Arc::new(cfg);
        if clients.len() < 1024 {
            clients.insert(local.to_string(), cfg.clone());
        }
        cfg
    }
}

fn trusted_roots(cfg: &S2sConfig) -> rustls::RootCertStore {
    let files: Vec<PathBuf> = if cfg.ca_files.is_empty() {
        SYSTEM_BUNDLES
            .iter()
            .map(PathBuf::from)
            .filter(|p| p.exists())
            .take(1)
            .collect()
    } else {
        cfg.ca_files.clone()
    };
    let mut roots = rustls::RootCertStore::empty();
    for f in &files {
        match CertificateDer::pem_file_iter(f) {
            Ok(certs) => {
                let (added, ignored) =
                    roots.add_parsable_certificates(certs.filter_map(|c| c.ok()));
                tracing::debug!(file = %f.display(), added, ignored, "s2s: trusted authorities");
            }
            Err(e) => tracing::warn!(file = %f.display(), error = %e, "s2s: cannot read CA file"),
        }
    }
    roots
}

/// Presents our certificate for the local domain of an outgoing stream.
#[derive(Debug)]
struct OurCertificate(Arc<CertifiedKey>);

impl rustls::client::ResolvesClientCert for OurCertificate {
    fn resolve(&self, _: &[&[u8]], _: &[rustls::SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
    fn has_certs(&self) -> bool {
        true
    }
}

/// Asks every incoming peer for a certificate and takes whatever comes
/// (signatures checked); `PeerTls::valid_for` judges it later.
#[derive(Debug)]
struct AnyClientCertificate;

impl ClientCertVerifier for AnyClientCertificate {
    fn client_auth_mandatory(&self) -> bool {
        false
    }
    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        &[]
    }
    fn verify_client_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        AnyCertificate.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        AnyCertificate.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        AnyCertificate.supported_verify_schemes()
    }
}
