//! The HT ("hashed token") SASL mechanisms used by XEP-0484 FAST
//! (draft-schmaus-kitten-sasl-ht): the client proves it holds a token the
//! server issued earlier, in one message, without a password derivation.
//!
//! Client first message: `authcid NUL HMAC(token, "Initiator" || cb-data)`;
//! the server answers with `HMAC(token, "Responder" || cb-data)` as SASL
//! additional data, so the client knows it talks to the server that issued
//! the token. `cb-data` is the channel binding of the TLS connection
//! (`-EXPR`: RFC 9266 tls-exporter) or empty (`-NONE`).

use super::SaslFailure;
use hmac::{KeyInit, Mac};
use subtle::ConstantTimeEq;

/// Mechanisms we offer, best first; `-EXPR` only where channel binding exists.
pub const EXPR: &str = "HT-SHA-256-EXPR";
pub const NONE: &str = "HT-SHA-256-NONE";

pub fn mechanisms(channel_binding: bool) -> Vec<&'static str> {
    if channel_binding {
        vec![EXPR, NONE]
    } else {
        vec![NONE]
    }
}

/// The channel-binding data a mechanism needs, or `None` when the
/// mechanism is not one of ours (or needs binding this connection lacks).
pub fn binding_for<'a>(mechanism: &str, cb: Option<&'a [u8]>) -> Option<&'a [u8]> {
    match mechanism {
        NONE => Some(&[]),
        EXPR => cb,
        _ => None,
    }
}

fn hmac(token: &[u8], label: &[u8], cb: &[u8]) -> Vec<u8> {
    let mut m = hmac::Hmac::<sha2::Sha256>::new_from_slice(token).expect("any key length");
    m.update(label);
    m.update(cb);
    m.finalize().into_bytes().to_vec()
}

/// Split the client's message into the username and its proof.
pub fn parse_initial(msg: &[u8]) -> Result<(String, &[u8]), SaslFailure> {
    let nul = msg
        .iter()
        .position(|b| *b == 0)
        .ok_or(SaslFailure::MalformedRequest)?;
    let user = std::str::from_utf8(&msg[..nul]).map_err(|_| SaslFailure::MalformedRequest)?;
    if user.is_empty() {
        return Err(SaslFailure::MalformedRequest);
    }
    Ok((user.to_string(), &msg[nul + 1..]))
}

/// Whether `proof` is the initiator HMAC for `token` (constant time).
pub fn verify_initiator(token: &[u8], cb: &[u8], proof: &[u8]) -> bool {
    hmac(token, b"Initiator", cb).ct_eq(proof).into()
}

/// The server's answer, sent as SASL2 additional data.
pub fn responder(token: &[u8], cb: &[u8]) -> Vec<u8> {
    hmac(token, b"Responder", cb)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initiator_and_responder_are_distinct_and_bound() {
        let token = b"secret-token";
        let mut msg = b"alice\0".to_vec();
        msg.extend(hmac(token, b"Initiator", b""));
        let (user, proof) = parse_initial(&msg).unwrap();
        assert_eq!(user, "alice");
        assert!(verify_initiator(token, b"", proof));
        // Another token, or other channel-binding data, does not verify.
        assert!(!verify_initiator(b"other", b"", proof));
        assert!(!verify_initiator(token, b"cb", proof));
        assert_ne!(responder(token, b""), proof);
        assert!(parse_initial(b"no-separator").is_err());
        assert_eq!(binding_for(EXPR, None), None);
        assert_eq!(binding_for(NONE, None), Some(&b""[..]));
    }
}
