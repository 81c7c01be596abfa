//! Certificates and the rustls server configuration.
//!
//! Configured PEM certificates are selected per connection by SNI: the first
//! certificate valid for the requested name wins, the first one overall is the
//! fallback. With none configured, a self-signed ECDSA P-256 certificate is
//! generated per host under `data_dir/certs` on first run (P-256 keeps
//! handshakes cheap) and reused afterwards.

use crate::config::Config;
use anyhow::{Context, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

/// ALPN protocol id for direct-TLS c2s (XEP-0368).
pub const ALPN_XMPP_CLIENT: &[u8] = b"xmpp-client";

/// Our certificates, chosen by name (SNI for TLS servers; the local domain
/// when we are the TLS client of another server).
#[derive(Debug)]
pub struct Certificates {
    certs: Vec<Arc<CertifiedKey>>,
    cache: Mutex<HashMap<String, Arc<CertifiedKey>>>,
}

impl Certificates {
    /// The first certificate valid for `name`, else the first one.
    pub fn pick(&self, name: &str) -> Arc<CertifiedKey> {
        if let Some(c) = self.cache.lock().unwrap().get(name) {
            return c.clone();
        }
        let chosen = ServerName::try_from(name.to_string())
            .ok()
            .and_then(|sn| {
                self.certs.iter().find(|ck| {
                    ck.cert.first().is_some_and(|der| {
                        webpki::EndEntityCert::try_from(der)
                            .is_ok_and(|ee| ee.verify_is_valid_for_subject_name(&sn).is_ok())
                    })
                })
            })
            .unwrap_or(&self.certs[0])
            .clone();
        let mut cache = self.cache.lock().unwrap();
        if cache.len() < 1024 {
            cache.insert(name.to_string(), chosen.clone());
        }
        chosen
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(match hello.server_name() {
            Some(name) => self.pick(&name.to_ascii_lowercase()),
            None => self.certs[0].clone(),
        })
    }
}

/// Load a PEM certificate chain and key into a rustls signing key.
pub fn load_certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading certificate {}", cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing certificate {}", cert.display()))?;
    if chain.is_empty() {
        anyhow::bail!("{}: no certificate found", cert.display());
    }
    let key_der = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("reading private key {}", key.display()))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key_der)
        .with_context(|| format!("unsupported private key type in {}", key.display()))?;
    Ok(CertifiedKey::new(chain, signing))
}

/// Paths of the generated certificate for `host`, creating it when missing.
pub fn ensure_self_signed(data_dir: &Path, host: &str) -> Result<(PathBuf, PathBuf)> {
    let dir = data_dir.join("certs");
    let cert = dir.join(format!("{host}.crt"));
    let key = dir.join(format!("{host}.key"));
    if cert.exists() && key.exists() {
        return Ok((cert, key));
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let names = vec![host.to_string(), format!("*.{host}")];
    let generated = rcgen::generate_simple_self_signed(names).context("generating certificate")?;
    write_private(&key, generated.signing_key.serialize_pem().as_bytes())?;
    std::fs::write(&cert, generated.cert.pem())
        .with_context(|| format!("writing {}", cert.display()))?;
    tracing::warn!(
        host,
        cert = %cert.display(),
        "generated a self-signed certificate; clients must accept it or you configure a real one"
    );
    Ok((cert, key))
}

fn write_private(path: &Path, data: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(data)?;
    Ok(())
}

/// Load the configured certificates, or generate self-signed ones.
pub fn load_certificates(cfg: &Config) -> Result<Arc<Certificates>> {
    let mut certs = Vec::new();
    if cfg.certificates.is_empty() {
        for host in &cfg.hosts {
            let (c, k) = ensure_self_signed(&cfg.data_dir, host)?;
            certs.push(Arc::new(load_certified_key(&c, &k)?));
        }
    } else {
        for c in &cfg.certificates {
            certs.push(Arc::new(load_certified_key(&c.cert, &c.key)?));
        }
    }
    Ok(Arc::new(Certificates {
        certs,
        cache: Mutex::new(HashMap::new()),
    }))
}

/// Build the TLS acceptor configuration for the client listeners.
pub fn server_config(resolver: Arc<Certificates>) -> Result<Arc<rustls::ServerConfig>> {
    let mut sc = rustls::ServerConfig::builder_with_provider(Arc::new(server_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    sc.alpn_protocols = vec![ALPN_XMPP_CLIENT.to_vec()];
    sc.ignore_client_order = true;
    // Keep per-connection buffering small: many idle sessions must stay cheap.
    sc.send_half_rtt_data = false;
    // tls-exporter channel binding on unbuffered connections (tls_exporter.rs).
    sc.key_log = Arc::new(crate::tls_exporter::Capture);
    Ok(Arc::new(sc))
}

/// ring's suites with AES-128-GCM first, chosen by us whatever the client
/// lists first: as strong as clients need, and its SHA-256 runs on the CPU's
/// SHA extensions where AES-256-GCM's SHA-384 does not (8 % of a login's CPU
/// was SHA-512 compression; BENCHMARKS.md).
fn server_provider() -> rustls::crypto::CryptoProvider {
    use rustls::CipherSuite as C;
    let mut p = rustls::crypto::ring::default_provider();
    let rank = |s: &rustls::SupportedCipherSuite| match s.suite() {
        C::TLS13_AES_128_GCM_SHA256 => 0,
        C::TLS13_AES_256_GCM_SHA384 | C::TLS13_CHACHA20_POLY1305_SHA256 => 1,
        C::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 | C::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => 2,
        _ => 3,
    };
    p.cipher_suites.sort_by_key(rank);
    p.secure_random = &crate::random::PooledRandom;
    p
}

/// TLS client settings that accept any server certificate (signatures are
/// still checked). Outgoing s2s uses them because dialback, not the
/// certificate, authenticates the remote domain; tests use them against the
/// generated self-signed certificate.
pub fn unverified_client_config() -> Arc<rustls::ClientConfig> {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let cfg = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .expect("default TLS versions")
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate))
                .with_no_client_auth();
            Arc::new(cfg)
        })
        .clone()
}

/// Accepts any certificate chain (handshake signatures are still checked):
/// whether the chain is valid for a domain is decided after the handshake,
/// by `s2s::certs`, where the domain is known.
#[derive(Debug)]
pub struct AnyCertificate;

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &rustls::crypto::ring::default_provider().signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &rustls::crypto::ring::default_provider().signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
