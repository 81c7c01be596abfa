//! XEP-0220 Server Dialback keys (XEP-0185 recipe): an HMAC only the server
//! that issued it can recompute, so the receiving server can check with the
//! authoritative server of a domain that a stream really comes from it.

use hmac::{KeyInit, Mac};
use sha2::Digest;

/// hex(HMAC-SHA256(SHA256(secret), receiving ' ' originating ' ' stream-id)).
pub fn key(secret: &[u8], receiving: &str, originating: &str, stream_id: &str) -> String {
    let k = sha2::Sha256::digest(secret);
    let mut m = hmac::Hmac::<sha2::Sha256>::new_from_slice(&k).expect("any key length");
    m.update(format!("{receiving} {originating} {stream_id}").as_bytes());
    m.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Constant-time comparison of a key we issued with one presented to us.
pub fn matches(expected: &str, given: &str) -> bool {
    subtle::ConstantTimeEq::ct_eq(expected.as_bytes(), given.trim().as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_depend_on_every_input() {
        let k = key(b"s", "a.example", "b.example", "id1");
        assert_eq!(k.len(), 64);
        assert!(matches(&k, &k));
        assert_ne!(k, key(b"t", "a.example", "b.example", "id1"));
        assert_ne!(k, key(b"s", "b.example", "a.example", "id1"));
        assert_ne!(k, key(b"s", "a.example", "b.example", "id2"));
    }
}
