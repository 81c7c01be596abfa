//! XEP-0484 Fast Authentication Streamlining Tokens: after one password
//! login a client asks for a token, then reconnects with the HT mechanism
//! (sasl/ht.rs) in a single round trip — what phones need when they wake up.
//!
//! Tokens are bound to the account, the client's user-agent id and the
//! mechanism they were requested for. A client holds at most two: the one
//! it logged in with and the newest, until it uses the newest (rotation
//! must not lock out a client that missed the new token). A password change
//! or account removal revokes them all (storage).

use crate::sasl::{SaslFailure, ht};
use crate::server::Server;
use crate::storage::{FastToken, now_unix};
use crate::xml::{BuilderExt, el};
use base64::Engine;
use minidom::Element;

pub const NS: &str = "urn:xmpp:fast:0";

/// The `<fast/>` inline feature of SASL2 with the token mechanisms on offer.
pub fn feature(channel_binding: bool) -> Element {
    let mut f = el("fast", NS).a("tls-0rtt", "false");
    for m in ht::mechanisms(channel_binding) {
        f = f.c(el("mechanism", NS).t(m).build());
    }
    f.build()
}

/// Create and store a token; `keep` is the token this login used (it stays
/// valid until the client first uses the new one). Returns `<token/>`.
pub async fn issue(
    server: &Server,
    owner: &str,
    agent: &str,
    mechanism: &str,
    keep: Option<&str>,
) -> anyhow::Result<Element> {
    let now = now_unix();
    let token = FastToken {
        token: base64::engine::general_purpose::STANDARD.encode(crate::random::bytes(32)),
        mechanism: mechanism.to_string(),
        created_at: now,
        expires_at: now + server.config.modules.fast.token_lifetime as i64,
        counter: 0,
    };
    server
        .storage
        .fast
        .add_fast_token(owner, agent, &token, keep)
        .await?;
    let expiry = std::time::UNIX_EPOCH + std::time::Duration::from_secs(token.expires_at as u64);
    Ok(el("token", NS)
        .a("expiry", crate::util::xmpp_datetime(expiry))
        .a("token", token.token.as_str())
        .build())
}

/// Check a token login: `proof` from the client's HT message, `cb` the
/// channel-binding data of the mechanism. Returns the token that matched
/// and the responder message for `<additional-data/>`.
pub async fn verify(
    server: &Server,
    owner: &str,
    agent: &str,
    mechanism: &str,
    proof: &[u8],
    cb: &[u8],
    count: Option<i64>,
) -> Result<(FastToken, Vec<u8>), SaslFailure> {
    let tokens = server
        .storage
        .fast
        .fast_tokens(owner, agent)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "FAST token lookup failed");
            SaslFailure::TemporaryAuthFailure
        })?;
    let Some(mut t) = tokens
        .into_iter()
        .filter(|t| t.mechanism == mechanism)
        .find(|t| ht::verify_initiator(t.token.as_bytes(), cb, proof))
    else {
        return Err(SaslFailure::NotAuthorized);
    };
    if t.expires_at <= now_unix() {
        return Err(SaslFailure::CredentialsExpired);
    }
    if let Some(c) = count {
        // A replayed (or reordered) message reuses a counter: refuse it.
        if c <= t.counter {
            return Err(SaslFailure::NotAuthorized);
        }
        t.counter = c;
    }
    server
        .storage
        .fast
        .used_fast_token(owner, agent, &t)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "FAST token update failed");
            SaslFailure::TemporaryAuthFailure
        })?;
    let answer = ht::responder(t.token.as_bytes(), cb);
    Ok((t, answer))
}
