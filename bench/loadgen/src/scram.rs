//! SCRAM-SHA-1 client maths (RFC 5802), with the derived keys cached per
//! (user, password, salt, iterations): RFC 5802 §5.1 lets a client keep
//! ClientKey/ServerKey instead of running PBKDF2 on every login, and without
//! the cache the load tool, not the server, would be the bottleneck.

use anyhow::{Context, Result, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{KeyInit, Mac};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

type HmacSha1 = hmac::Hmac<sha1::Sha1>;

fn hmac(key: &[u8], data: &[&[u8]]) -> [u8; 20] {
    let mut m = HmacSha1::new_from_slice(key).expect("any key length");
    for d in data {
        m.update(d);
    }
    m.finalize().into_bytes().into()
}

fn sha1(data: &[u8]) -> [u8; 20] {
    use sha1::Digest;
    sha1::Sha1::digest(data).into()
}

#[derive(Clone, Copy)]
pub struct Keys {
    client_key: [u8; 20],
    stored_key: [u8; 20],
    server_key: [u8; 20],
}

impl Keys {
    pub fn derive(password: &[u8], salt: &[u8], iterations: u32) -> Keys {
        let mut salted = [0u8; 20];
        pbkdf2::pbkdf2_hmac::<sha1::Sha1>(password, salt, iterations, &mut salted);
        let client_key = hmac(&salted, &[b"Client Key"]);
        Keys {
            client_key,
            stored_key: sha1(&client_key),
            server_key: hmac(&salted, &[b"Server Key"]),
        }
    }

    pub fn stored_key(&self) -> &[u8; 20] {
        &self.stored_key
    }

    pub fn server_key(&self) -> &[u8; 20] {
        &self.server_key
    }
}

/// Shared cache of derived keys. Counts derivations so the report can say how
/// many PBKDF2 runs the tool did.
type CacheKey = (String, Vec<u8>, u32);

#[derive(Clone, Default)]
pub struct KeyCache {
    inner: Arc<Mutex<HashMap<CacheKey, Keys>>>,
    pub derivations: Arc<std::sync::atomic::AtomicU64>,
}

impl KeyCache {
    pub fn get(&self, user: &str, password: &str, salt: &[u8], iterations: u32) -> Keys {
        let key = (format!("{user}\0{password}"), salt.to_vec(), iterations);
        if let Some(k) = self.inner.lock().unwrap().get(&key) {
            return *k;
        }
        let k = Keys::derive(password.as_bytes(), salt, iterations);
        self.derivations
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.inner.lock().unwrap().insert(key, k);
        k
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex20(s: &str) -> Option<[u8; 20]> {
    if s.len() != 40 {
        return None;
    }
    let mut out = [0u8; 20];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

impl KeyCache {
    /// Load keys saved by an earlier run (`--key-cache`): lines of
    /// `user\0pass` (hex), salt (hex), iterations, ClientKey, StoredKey, ServerKey.
    /// A stale entry (the server re-salted) is simply never hit.
    pub fn load(&self, path: &std::path::Path) -> usize {
        let Ok(text) = std::fs::read_to_string(path) else {
            return 0;
        };
        let mut m = self.inner.lock().unwrap();
        let mut n = 0;
        for line in text.lines() {
            let f: Vec<&str> = line.split('\t').collect();
            if f.len() != 6 {
                continue;
            }
            let (Some(id), Some(salt), Ok(iter)) = (unhex(f[0]), unhex(f[1]), f[2].parse::<u32>())
            else {
                continue;
            };
            let (Some(ck), Some(stk), Some(svk)) = (unhex20(f[3]), unhex20(f[4]), unhex20(f[5]))
            else {
                continue;
            };
            let Ok(id) = String::from_utf8(id) else {
                continue;
            };
            m.insert(
                (id, salt, iter),
                Keys {
                    client_key: ck,
                    stored_key: stk,
                    server_key: svk,
                },
            );
            n += 1;
        }
        n
    }

    pub fn save(&self, path: &std::path::Path) -> std::io::Result<()> {
        let m = self.inner.lock().unwrap();
        let mut out = String::with_capacity(m.len() * 200);
        for ((id, salt, iter), k) in m.iter() {
            out.push_str(&format!(
                "{}\t{}\t{iter}\t{}\t{}\t{}\n",
                hex(id.as_bytes()),
                hex(salt),
                hex(&k.client_key),
                hex(&k.stored_key),
                hex(&k.server_key)
            ));
        }
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, out)?;
        std::fs::rename(tmp, path)
    }
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok())
        .collect()
}

pub fn nonce() -> String {
    let mut b = [0u8; 18];
    getrandom::fill(&mut b).expect("getrandom");
    B64.encode(b)
}

/// Client state between the first message and the server's final message.
pub struct ScramClient {
    pub client_first_bare: String,
    pub cnonce: String,
    expected_server_sig: Option<[u8; 20]>,
}

impl ScramClient {
    /// Returns the client and the base64 `<auth>` payload (`n,,n=user,r=nonce`).
    pub fn start(user: &str) -> (ScramClient, String) {
        let cnonce = nonce();
        // usernames here are `userN`: no '=' or ',' to escape.
        let client_first_bare = format!("n={user},r={cnonce}");
        let payload = B64.encode(format!("n,,{client_first_bare}"));
        (
            ScramClient {
                client_first_bare,
                cnonce,
                expected_server_sig: None,
            },
            payload,
        )
    }

    /// Handle the server-first message (base64 text of `<challenge>`), return
    /// the base64 `<response>` payload.
    pub fn respond(
        &mut self,
        challenge_b64: &[u8],
        user: &str,
        password: &str,
        cache: &KeyCache,
    ) -> Result<String> {
        let server_first = B64
            .decode(trim_ascii(challenge_b64))
            .context("challenge is not base64")?;
        let server_first = String::from_utf8(server_first).context("challenge not UTF-8")?;
        let (mut r, mut s, mut i) = (None, None, None);
        for part in server_first.split(',') {
            if let Some(v) = part.strip_prefix("r=") {
                r = Some(v);
            } else if let Some(v) = part.strip_prefix("s=") {
                s = Some(v);
            } else if let Some(v) = part.strip_prefix("i=") {
                i = Some(v);
            }
        }
        let (Some(r), Some(s), Some(i)) = (r, s, i) else {
            bail!("bad server-first-message {server_first:?}");
        };
        if !r.starts_with(&self.cnonce) {
            bail!("server nonce does not extend ours");
        }
        let salt = B64.decode(s).context("salt not base64")?;
        let iterations: u32 = i.parse().context("bad iteration count")?;
        let keys = cache.get(user, password, &salt, iterations);
        let without_proof = format!("c=biws,r={r}");
        let auth_message = [
            self.client_first_bare.as_bytes(),
            b",",
            server_first.as_bytes(),
            b",",
            without_proof.as_bytes(),
        ];
        let client_sig = hmac(&keys.stored_key, &auth_message);
        let mut proof = keys.client_key;
        for (p, s) in proof.iter_mut().zip(client_sig.iter()) {
            *p ^= s;
        }
        self.expected_server_sig = Some(hmac(&keys.server_key, &auth_message));
        Ok(B64.encode(format!("{without_proof},p={}", B64.encode(proof))))
    }

    /// Check `v=` in `<success>` (base64 text).
    pub fn verify_success(&self, success_b64: &[u8]) -> Result<()> {
        let text = B64
            .decode(trim_ascii(success_b64))
            .context("success data not base64")?;
        let text = String::from_utf8_lossy(&text);
        let v = text
            .split(',')
            .find_map(|p| p.strip_prefix("v="))
            .context("no v= in success")?;
        let v = B64.decode(v).context("v= not base64")?;
        match self.expected_server_sig {
            Some(sig) if sig[..] == v[..] => Ok(()),
            _ => bail!("server signature mismatch"),
        }
    }
}

fn trim_ascii(b: &[u8]) -> &[u8] {
    b.trim_ascii()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_cache_file_roundtrip() {
        let a = KeyCache::default();
        let k = a.get("user1", "pass1", b"salt", 64);
        let path = std::env::temp_dir().join(format!("loadgen-keys-{}.tsv", std::process::id()));
        a.save(&path).unwrap();
        let b = KeyCache::default();
        assert_eq!(b.load(&path), 1);
        let k2 = b.get("user1", "pass1", b"salt", 64);
        assert_eq!(b.derivations.load(std::sync::atomic::Ordering::Relaxed), 0);
        assert_eq!(k.stored_key, k2.stored_key);
        assert_eq!(k.client_key, k2.client_key);
        std::fs::remove_file(path).unwrap();
    }

    /// RFC 5802 §5 example exchange.
    #[test]
    fn rfc5802_example() {
        let cache = KeyCache::default();
        let mut c = ScramClient {
            client_first_bare: "n=user,r=fyko+d2lbbFgONRv9qkxdawL".into(),
            cnonce: "fyko+d2lbbFgONRv9qkxdawL".into(),
            expected_server_sig: None,
        };
        let sf =
            B64.encode("r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096");
        let resp = c.respond(sf.as_bytes(), "user", "pencil", &cache).unwrap();
        let resp = String::from_utf8(B64.decode(resp).unwrap()).unwrap();
        assert_eq!(
            resp,
            "c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts="
        );
        c.verify_success(B64.encode("v=rmF9pqV8S7suAoZWja4dJRkFsKQ=").as_bytes())
            .unwrap();
        assert_eq!(
            cache.derivations.load(std::sync::atomic::Ordering::Relaxed),
            1
        );
    }
}
