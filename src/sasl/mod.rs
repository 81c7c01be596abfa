//! SASL mechanisms (RFC 6120 §6): SCRAM-SHA-1/-256 with optional channel
//! binding (-PLUS, tls-exporter per RFC 9266), and PLAIN over TLS.
//!
//! Accounts store only SCRAM keys (salt, iterations, StoredKey, ServerKey) for
//! both hashes; PLAIN verifies by deriving the same keys from the password.

pub mod ht;
pub mod scram;
pub mod ssdp;

pub use scram::{HashAlg, ScramCredentials, ScramServer};

/// SASL failure conditions (RFC 6120 §6.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaslFailure {
    Aborted,
    AccountDisabled,
    CredentialsExpired,
    EncryptionRequired,
    IncorrectEncoding,
    InvalidAuthzid,
    InvalidMechanism,
    MalformedRequest,
    MechanismTooWeak,
    NotAuthorized,
    TemporaryAuthFailure,
}

impl SaslFailure {
    pub fn condition(self) -> &'static str {
        match self {
            SaslFailure::Aborted => "aborted",
            SaslFailure::AccountDisabled => "account-disabled",
            SaslFailure::CredentialsExpired => "credentials-expired",
            SaslFailure::EncryptionRequired => "encryption-required",
            SaslFailure::IncorrectEncoding => "incorrect-encoding",
            SaslFailure::InvalidAuthzid => "invalid-authzid",
            SaslFailure::InvalidMechanism => "invalid-mechanism",
            SaslFailure::MalformedRequest => "malformed-request",
            SaslFailure::MechanismTooWeak => "mechanism-too-weak",
            SaslFailure::NotAuthorized => "not-authorized",
            SaslFailure::TemporaryAuthFailure => "temporary-auth-failure",
        }
    }
}

/// Parse a PLAIN message: `[authzid] NUL authcid NUL passwd` (RFC 4616).
pub fn parse_plain(msg: &[u8]) -> Result<(String, String, String), SaslFailure> {
    let parts: Vec<&[u8]> = msg.split(|b| *b == 0).collect();
    if parts.len() != 3 {
        return Err(SaslFailure::MalformedRequest);
    }
    let s = |b: &[u8]| String::from_utf8(b.to_vec()).map_err(|_| SaslFailure::MalformedRequest);
    let (authz, user, pass) = (s(parts[0])?, s(parts[1])?, s(parts[2])?);
    if user.is_empty() || pass.is_empty() {
        return Err(SaslFailure::NotAuthorized);
    }
    Ok((authz, user, pass))
}
