//! SCRAM server side (RFC 5802, RFC 7677) with channel binding (RFC 9266).

use super::SaslFailure;
use crate::random::bytes as random_bytes;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{KeyInit, Mac};
use subtle::ConstantTimeEq;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HashAlg {
    Sha1,
    Sha256,
}

impl HashAlg {
    pub fn name(self) -> &'static str {
        match self {
            HashAlg::Sha1 => "SHA-1",
            HashAlg::Sha256 => "SHA-256",
        }
    }

    fn hmac(self, key: &[u8], data: &[&[u8]]) -> Vec<u8> {
        match self {
            HashAlg::Sha1 => {
                let mut m = hmac::Hmac::<sha1::Sha1>::new_from_slice(key).expect("any key length");
                data.iter().for_each(|d| m.update(d));
                m.finalize().into_bytes().to_vec()
            }
            HashAlg::Sha256 => {
                let mut m =
                    hmac::Hmac::<sha2::Sha256>::new_from_slice(key).expect("any key length");
                data.iter().for_each(|d| m.update(d));
                m.finalize().into_bytes().to_vec()
            }
        }
    }

    pub(crate) fn hash(self, data: &[u8]) -> Vec<u8> {
        use sha2::Digest;
        match self {
            HashAlg::Sha1 => sha1::Sha1::digest(data).to_vec(),
            HashAlg::Sha256 => sha2::Sha256::digest(data).to_vec(),
        }
    }

    fn salted_password(self, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
        match self {
            HashAlg::Sha1 => {
                let mut out = vec![0u8; 20];
                pbkdf2::pbkdf2_hmac::<sha1::Sha1>(password, salt, iterations, &mut out);
                out
            }
            HashAlg::Sha256 => {
                let mut out = vec![0u8; 32];
                pbkdf2::pbkdf2_hmac::<sha2::Sha256>(password, salt, iterations, &mut out);
                out
            }
        }
    }
}

/// What the account store keeps per hash: never the password itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScramCredentials {
    pub salt: Vec<u8>,
    pub iterations: u32,
    pub stored_key: Vec<u8>,
    pub server_key: Vec<u8>,
}

pub const DEFAULT_ITERATIONS: u32 = 4096;

impl ScramCredentials {
    /// Derive keys from a password (SASLprep'd first, RFC 5802 §2.2).
    pub fn derive(alg: HashAlg, password: &str, salt: &[u8], iterations: u32) -> Self {
        let prepped = stringprep::saslprep(password)
            .map(|c| c.into_owned())
            .unwrap_or_else(|_| password.to_string());
        let salted = alg.salted_password(prepped.as_bytes(), salt, iterations);
        let client_key = alg.hmac(&salted, &[b"Client Key"]);
        ScramCredentials {
            salt: salt.to_vec(),
            iterations,
            stored_key: alg.hash(&client_key),
            server_key: alg.hmac(&salted, &[b"Server Key"]),
        }
    }

    pub fn new_random(alg: HashAlg, password: &str) -> Self {
        Self::derive(alg, password, &random_bytes(16), DEFAULT_ITERATIONS)
    }

    /// Check a plaintext password (PLAIN) against these keys.
    pub fn verify_password(&self, alg: HashAlg, password: &str) -> bool {
        let other = Self::derive(alg, password, &self.salt, self.iterations);
        bool::from(other.stored_key.ct_eq(&self.stored_key))
    }
}

#[derive(Debug)]
enum State {
    Start,
    SentFirst {
        client_first_bare: String,
        server_first: String,
        nonce: String,
        creds: Option<ScramCredentials>,
    },
    Done,
}

/// One SCRAM exchange. `cb_data` is the tls-exporter value when the stream is
/// TLS 1.3; `plus_offered` records whether we advertised -PLUS (for the `y`
/// downgrade check).
#[derive(Debug)]
pub struct ScramServer {
    alg: HashAlg,
    plus: bool,
    cb_data: Option<Vec<u8>>,
    plus_offered: bool,
    gs2_header: String,
    pub username: String,
    pub authzid: Option<String>,
    /// XEP-0474 `h` for the server-first-message, when the caller sets it.
    downgrade_hash: Option<String>,
    state: State,
}

impl ScramServer {
    pub fn new(alg: HashAlg, plus: bool, cb_data: Option<Vec<u8>>, plus_offered: bool) -> Self {
        ScramServer {
            alg,
            plus,
            cb_data,
            plus_offered,
            gs2_header: String::new(),
            username: String::new(),
            authzid: None,
            downgrade_hash: None,
            state: State::Start,
        }
    }

    /// Send XEP-0474 downgrade protection (`h=`) in the server-first-message.
    pub fn with_downgrade_hash(mut self, h: String) -> Self {
        self.downgrade_hash = Some(h);
        self
    }

    /// Parse client-first; returns the (SASLprep'd) username to look up.
    pub fn client_first(&mut self, msg: &[u8]) -> Result<String, SaslFailure> {
        let msg = std::str::from_utf8(msg).map_err(|_| SaslFailure::MalformedRequest)?;
        let mut it = msg.splitn(3, ',');
        let cbflag = it.next().ok_or(SaslFailure::MalformedRequest)?;
        let authz = it.next().ok_or(SaslFailure::MalformedRequest)?;
        let bare = it.next().ok_or(SaslFailure::MalformedRequest)?;
        match cbflag {
            "n" if !self.plus => {}
            // The client could bind but believes we cannot: a downgrade if we offered -PLUS.
            "y" if !self.plus && !self.plus_offered => {}
            "y" if !self.plus => return Err(SaslFailure::NotAuthorized),
            "p=tls-exporter" if self.plus && self.cb_data.is_some() => {}
            _ => return Err(SaslFailure::NotAuthorized),
        }
        if !authz.is_empty() {
            let a = authz
                .strip_prefix("a=")
                .ok_or(SaslFailure::MalformedRequest)?;
            self.authzid = Some(decode_saslname(a)?);
        }
        self.gs2_header = format!("{cbflag},{authz},");
        let mut user = None;
        let mut cnonce = None;
        for attr in bare.split(',') {
            match attr.split_once('=') {
                Some(("n", v)) => user = Some(decode_saslname(v)?),
                Some(("r", v)) => cnonce = Some(v.to_string()),
                Some(("m", _)) => return Err(SaslFailure::MalformedRequest),
                _ => {}
            }
        }
        let (user, cnonce) = match (user, cnonce) {
            (Some(u), Some(n)) if !u.is_empty() && !n.is_empty() => (u, n),
            _ => return Err(SaslFailure::MalformedRequest),
        };
        let user = stringprep::saslprep(&user)
            .map_err(|_| SaslFailure::MalformedRequest)?
            .into_owned();
        self.username = user.clone();
        self.state = State::SentFirst {
            client_first_bare: bare.to_string(),
            server_first: String::new(),
            nonce: format!("{cnonce}{}", B64.encode(random_bytes(18))),
            creds: None,
        };
        Ok(user)
    }

    /// Build server-first. With `None` (unknown user) a fake salt is used so
    /// that the exchange fails at the proof, not earlier (no user enumeration).
    pub fn server_first(
        &mut self,
        creds: Option<ScramCredentials>,
    ) -> Result<Vec<u8>, SaslFailure> {
        let State::SentFirst {
            server_first,
            nonce,
            creds: slot,
            ..
        } = &mut self.state
        else {
            return Err(SaslFailure::MalformedRequest);
        };
        let (salt, iter) = match &creds {
            Some(c) => (c.salt.clone(), c.iterations),
            None => (random_bytes(16), DEFAULT_ITERATIONS),
        };
        *server_first = format!("r={nonce},s={},i={iter}", B64.encode(salt));
        if let Some(h) = &self.downgrade_hash {
            server_first.push_str(",h=");
            server_first.push_str(h);
        }
        *slot = creds;
        Ok(server_first.clone().into_bytes())
    }

    /// Verify client-final; returns server-final (`v=...`) on success.
    pub fn client_final(&mut self, msg: &[u8]) -> Result<Vec<u8>, SaslFailure> {
        let state = std::mem::replace(&mut self.state, State::Done);
        let State::SentFirst {
            client_first_bare,
            server_first,
            nonce,
            creds,
        } = state
        else {
            return Err(SaslFailure::MalformedRequest);
        };
        let msg = std::str::from_utf8(msg).map_err(|_| SaslFailure::MalformedRequest)?;
        let (without_proof, proof) = msg
            .rsplit_once(",p=")
            .ok_or(SaslFailure::MalformedRequest)?;
        let mut cbind = None;
        let mut rnonce = None;
        for attr in without_proof.split(',') {
            match attr.split_once('=') {
                Some(("c", v)) => cbind = Some(v),
                Some(("r", v)) => rnonce = Some(v),
                _ => {}
            }
        }
        let mut expected_cb = self.gs2_header.as_bytes().to_vec();
        if self.plus
            && let Some(d) = &self.cb_data
        {
            expected_cb.extend_from_slice(d);
        }
        let cbind = B64
            .decode(cbind.ok_or(SaslFailure::MalformedRequest)?)
            .map_err(|_| SaslFailure::IncorrectEncoding)?;
        if cbind != expected_cb {
            return Err(SaslFailure::NotAuthorized);
        }
        if rnonce != Some(nonce.as_str()) {
            return Err(SaslFailure::NotAuthorized);
        }
        let proof = B64
            .decode(proof)
            .map_err(|_| SaslFailure::IncorrectEncoding)?;
        let creds = creds.ok_or(SaslFailure::NotAuthorized)?;
        let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
        let client_sig = self.alg.hmac(&creds.stored_key, &[auth_message.as_bytes()]);
        if proof.len() != client_sig.len() {
            return Err(SaslFailure::NotAuthorized);
        }
        let client_key: Vec<u8> = proof.iter().zip(&client_sig).map(|(a, b)| a ^ b).collect();
        if !bool::from(self.alg.hash(&client_key).ct_eq(&creds.stored_key)) {
            return Err(SaslFailure::NotAuthorized);
        }
        let server_sig = self.alg.hmac(&creds.server_key, &[auth_message.as_bytes()]);
        Ok(format!("v={}", B64.encode(server_sig)).into_bytes())
    }
}

fn decode_saslname(s: &str) -> Result<String, SaslFailure> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('=') {
        out.push_str(&rest[..i]);
        match rest.get(i..i + 3) {
            Some("=2C") => out.push(','),
            Some("=3D") => out.push('='),
            _ => return Err(SaslFailure::MalformedRequest),
        }
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Client side, for the load generator and tests: compute client-final for
/// given messages. Kept here so both sides share one definition of the maths.
pub mod client {
    use super::*;

    /// Keys a client can cache per account (RFC 5802 allows it).
    #[derive(Debug, Clone)]
    pub struct ClientKeys {
        pub client_key: Vec<u8>,
        pub server_key: Vec<u8>,
    }

    pub fn keys(alg: HashAlg, password: &str, salt: &[u8], iterations: u32) -> ClientKeys {
        let salted = alg.salted_password(password.as_bytes(), salt, iterations);
        ClientKeys {
            client_key: alg.hmac(&salted, &[b"Client Key"]),
            server_key: alg.hmac(&salted, &[b"Server Key"]),
        }
    }

    /// Returns (client-final message, expected server signature).
    pub fn final_message(
        alg: HashAlg,
        keys: &ClientKeys,
        client_first_bare: &str,
        server_first: &str,
        gs2_and_cb: &[u8],
    ) -> (String, Vec<u8>) {
        let nonce = server_first
            .split(',')
            .find_map(|a| a.strip_prefix("r="))
            .unwrap_or_default();
        let without_proof = format!("c={},r={nonce}", B64.encode(gs2_and_cb));
        let auth = format!("{client_first_bare},{server_first},{without_proof}");
        let stored = alg.hash(&keys.client_key);
        let sig = alg.hmac(&stored, &[auth.as_bytes()]);
        let proof: Vec<u8> = keys
            .client_key
            .iter()
            .zip(&sig)
            .map(|(a, b)| a ^ b)
            .collect();
        let server_sig = alg.hmac(&keys.server_key, &[auth.as_bytes()]);
        (
            format!("{without_proof},p={}", B64.encode(proof)),
            server_sig,
        )
    }

    pub fn parse_server_first(s: &str) -> Option<(Vec<u8>, u32)> {
        let mut salt = None;
        let mut iter = None;
        for a in s.split(',') {
            if let Some(v) = a.strip_prefix("s=") {
                salt = B64.decode(v).ok();
            } else if let Some(v) = a.strip_prefix("i=") {
                iter = v.parse().ok();
            }
        }
        Some((salt?, iter?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7677 §3 test vector (SCRAM-SHA-256, user "user", password "pencil").
    #[test]
    fn rfc7677_vector() {
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let creds = ScramCredentials::derive(HashAlg::Sha256, "pencil", &salt, 4096);
        let mut s = ScramServer::new(HashAlg::Sha256, false, None, false);
        let user = s.client_first(b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO").unwrap();
        assert_eq!(user, "user");
        // Force the RFC's server nonce.
        if let State::SentFirst { nonce, .. } = &mut s.state {
            *nonce = "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0".into();
        }
        let sf = s.server_first(Some(creds)).unwrap();
        assert_eq!(
            String::from_utf8(sf).unwrap(),
            "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
        );
        let fin = s
            .client_final(b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
            .unwrap();
        assert_eq!(
            String::from_utf8(fin).unwrap(),
            "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
    }

    #[test]
    fn wrong_password_and_downgrade_fail() {
        let creds = ScramCredentials::new_random(HashAlg::Sha1, "right");
        let mut s = ScramServer::new(HashAlg::Sha1, false, None, false);
        s.client_first(b"n,,n=u,r=abc").unwrap();
        let sf = String::from_utf8(s.server_first(Some(creds)).unwrap()).unwrap();
        let (salt, it) = client::parse_server_first(&sf).unwrap();
        let keys = client::keys(HashAlg::Sha1, "wrong", &salt, it);
        let (fin, _) = client::final_message(HashAlg::Sha1, &keys, "n=u,r=abc", &sf, b"n,,");
        assert_eq!(
            s.client_final(fin.as_bytes()),
            Err(SaslFailure::NotAuthorized)
        );

        let mut s = ScramServer::new(HashAlg::Sha1, false, Some(vec![1]), true);
        assert!(s.client_first(b"y,,n=u,r=abc").is_err());
    }

    #[test]
    fn plus_binds_to_channel() {
        let creds = ScramCredentials::new_random(HashAlg::Sha256, "pw");
        let cb = vec![7u8; 32];
        let run = |client_cb: &[u8]| {
            let mut s = ScramServer::new(HashAlg::Sha256, true, Some(cb.clone()), true);
            s.client_first(b"p=tls-exporter,,n=u,r=n1").unwrap();
            let sf = String::from_utf8(s.server_first(Some(creds.clone())).unwrap()).unwrap();
            let (salt, it) = client::parse_server_first(&sf).unwrap();
            let keys = client::keys(HashAlg::Sha256, "pw", &salt, it);
            let mut gs2 = b"p=tls-exporter,,".to_vec();
            gs2.extend_from_slice(client_cb);
            let (fin, sig) = client::final_message(HashAlg::Sha256, &keys, "n=u,r=n1", &sf, &gs2);
            s.client_final(fin.as_bytes()).map(|v| (v, sig))
        };
        let (v, sig) = run(&cb).unwrap();
        assert_eq!(v, format!("v={}", B64.encode(sig)).into_bytes());
        assert!(run(&[8u8; 32]).is_err());
    }

    #[test]
    fn plain_verification() {
        let c = ScramCredentials::new_random(HashAlg::Sha256, "s3cret");
        assert!(c.verify_password(HashAlg::Sha256, "s3cret"));
        assert!(!c.verify_password(HashAlg::Sha256, "s3creT"));
    }
}
