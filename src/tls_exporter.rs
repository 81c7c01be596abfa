//! TLS 1.3 exporters (RFC 8446 §7.5) for connections on rustls's unbuffered
//! API, which has no `export_keying_material`. SCRAM-*-PLUS needs one for
//! `tls-exporter` channel binding (RFC 9266).
//!
//! rustls hands every secret it derives to the configuration's `KeyLog`,
//! synchronously, on the thread that runs the handshake step. [`Capture`]
//! keeps the exporter master secret in a thread-local slot;
//! `tls_stream` takes it out right after each handshake step, before that
//! thread can run any other connection, and [`export`] derives from it.

use rustls::crypto::tls13::{HkdfExpander, OkmBlock};
use std::cell::Cell;

const LABEL: &str = "EXPORTER_SECRET";

/// An exporter master secret: one hash output (SHA-256 or SHA-384).
#[derive(Clone, Copy)]
pub struct Secret {
    bytes: [u8; 48],
    len: u8,
}

impl Secret {
    fn new(secret: &[u8]) -> Option<Self> {
        let mut bytes = [0u8; 48];
        bytes.get_mut(..secret.len())?.copy_from_slice(secret);
        Some(Self {
            bytes,
            len: secret.len() as u8,
        })
    }

    fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

thread_local! {
    static CAPTURED: Cell<Option<Secret>> = const { Cell::new(None) };
}

/// The `KeyLog` of configurations whose connections need exporters.
#[derive(Debug)]
pub struct Capture;

impl rustls::KeyLog for Capture {
    fn will_log(&self, label: &str) -> bool {
        label == LABEL
    }

    fn log(&self, label: &str, _client_random: &[u8], secret: &[u8]) {
        if label == LABEL {
            CAPTURED.set(Secret::new(secret));
        }
    }
}

/// The secret captured on this thread since the last call, if any.
pub fn take() -> Option<Secret> {
    CAPTURED.take()
}

/// `TLS-Exporter(label, "", len)`:
/// `HKDF-Expand-Label(Derive-Secret(secret, label, ""), "exporter", Hash(""), len)`.
pub fn export(
    suite: &rustls::Tls13CipherSuite,
    secret: &Secret,
    label: &[u8],
    len: usize,
) -> Option<Vec<u8>> {
    let hkdf = suite.hkdf_provider;
    let hash = suite.common.hash_provider;
    let empty = hash.hash(&[]);
    let mut derived = [0u8; 64];
    let derived = derived.get_mut(..hash.output_len())?;
    expand_label(
        hkdf.expander_for_okm(&OkmBlock::new(secret.as_slice()))
            .as_ref(),
        label,
        empty.as_ref(),
        derived,
    )?;
    let mut out = vec![0u8; len];
    expand_label(
        hkdf.expander_for_okm(&OkmBlock::new(derived)).as_ref(),
        b"exporter",
        empty.as_ref(),
        &mut out,
    )?;
    Some(out)
}

/// RFC 8446 §7.1 `HKDF-Expand-Label`.
fn expand_label(
    expander: &dyn HkdfExpander,
    label: &[u8],
    context: &[u8],
    out: &mut [u8],
) -> Option<()> {
    let length = u16::try_from(out.len()).ok()?.to_be_bytes();
    let label_len = [u8::try_from(6 + label.len()).ok()?];
    let context_len = [u8::try_from(context.len()).ok()?];
    expander
        .expand_slice(
            &[&length, &label_len, b"tls13 ", label, &context_len, context],
            out,
        )
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::{ClientConnection, ServerConnection};
    use std::sync::Arc;

    /// A buffered rustls handshake in memory, server with [`Capture`]; our
    /// exporter must equal the one rustls computes on the client side.
    fn check(suite: rustls::SupportedCipherSuite) {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let key =
            rustls::pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut sc = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.cert.der().clone()], key)
            .unwrap();
        sc.key_log = Arc::new(Capture);
        let mut client_provider = rustls::crypto::ring::default_provider();
        client_provider.cipher_suites = vec![suite];
        let cc = rustls::ClientConfig::builder_with_provider(Arc::new(client_provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(crate::tls::AnyCertificate))
            .with_no_client_auth();
        let mut client =
            ClientConnection::new(Arc::new(cc), "localhost".try_into().unwrap()).unwrap();
        let mut server = ServerConnection::new(Arc::new(sc)).unwrap();
        take();
        for _ in 0..10 {
            let mut wire = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut wire).unwrap();
            }
            server.read_tls(&mut &wire[..]).unwrap();
            server.process_new_packets().unwrap();
            let mut wire = Vec::new();
            while server.wants_write() {
                server.write_tls(&mut wire).unwrap();
            }
            client.read_tls(&mut &wire[..]).unwrap();
            client.process_new_packets().unwrap();
            if !client.is_handshaking() && !server.is_handshaking() {
                break;
            }
        }
        let secret = take().expect("exporter secret captured");
        let mut expected = [0u8; 32];
        client
            .export_keying_material(&mut expected, b"EXPORTER-Channel-Binding", None)
            .unwrap();
        let tls13 = suite.tls13().unwrap();
        let ours = export(tls13, &secret, b"EXPORTER-Channel-Binding", 32).unwrap();
        assert_eq!(ours, expected);
    }

    #[test]
    fn sha256_suite_matches_rustls() {
        check(rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256);
    }

    #[test]
    fn sha384_suite_matches_rustls() {
        check(rustls::crypto::ring::cipher_suite::TLS13_AES_256_GCM_SHA384);
    }
}
