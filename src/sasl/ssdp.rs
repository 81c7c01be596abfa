//! XEP-0474 SASL SCRAM Downgrade Protection: the server-first-message
//! carries `h`, a hash of the mechanisms and channel-binding types we
//! advertised. SCRAM signs the server-first-message, so a client that
//! recomputes the hash from what it saw detects a list an attacker trimmed.

use super::HashAlg;
use base64::Engine;

/// The `h` attribute value: sorted mechanisms joined by 0x1E, then (when
/// XEP-0440 channel-binding types were advertised) 0x1F and the sorted
/// types joined by 0x1E, hashed with the SCRAM mechanism's hash.
pub fn hash(alg: HashAlg, mechanisms: &[&str], cb_types: Option<&[&str]>) -> String {
    let mut mechs = mechanisms.to_vec();
    mechs.sort_unstable(); // i;octet: byte order
    let mut s = mechs.join("\u{1e}");
    if let Some(types) = cb_types {
        let mut types = types.to_vec();
        types.sort_unstable();
        s.push('\u{1f}');
        s.push_str(&types.join("\u{1e}"));
    }
    base64::engine::general_purpose::STANDARD.encode(alg.hash(s.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_xep_example() {
        // XEP-0474 §4.3: SHA-1 over
        // 'SCRAM-SHA-1\x1eSCRAM-SHA-1-PLUS\x1ftls-exporter\x1etls-server-end-point'.
        let h = hash(
            HashAlg::Sha1,
            &["SCRAM-SHA-1-PLUS", "SCRAM-SHA-1"],
            Some(&["tls-server-end-point", "tls-exporter"]),
        );
        assert_eq!(h, "G6k/rBLDqgOhRRaCuuatSDFkJ08=");
    }
}
