//! XEP-0352 Client State Indication: while a client says it is inactive
//! (a phone in a pocket), presence updates and chat-state-only messages are
//! held back, keeping only the latest presence per sender; anything important
//! (a message with content, an IQ, a subscription request) flushes the held
//! stanzas first, in order, and `<active/>` flushes everything.

use bytes::Bytes;

pub const NS: &str = "urn:xmpp:csi:0";
/// Held stanzas beyond this are flushed anyway.
const MAX_HELD: usize = 500;

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The value of attribute `name` in the start tag (our serializer quotes with `'`).
fn start_tag_attr<'a>(stanza: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let end = stanza.iter().position(|b| *b == b'>')?;
    let tag = &stanza[..end];
    let mut pat = Vec::with_capacity(name.len() + 3);
    pat.push(b' ');
    pat.extend_from_slice(name);
    pat.extend_from_slice(b"='");
    let start = find(tag, &pat)? + pat.len();
    let len = tag[start..].iter().position(|b| *b == b'\'')?;
    Some(&tag[start..start + len])
}

/// `Some(key)` when the stanza can wait: the key dedupes presence per sender.
fn noise(stanza: &[u8]) -> Option<Option<Vec<u8>>> {
    if stanza.starts_with(b"<presence") {
        let kind = start_tag_attr(stanza, b"type");
        return match kind {
            None | Some(b"unavailable") => {
                Some(start_tag_attr(stanza, b"from").map(<[u8]>::to_vec))
            }
            _ => None,
        };
    }
    if stanza.starts_with(b"<message")
        && find(stanza, b"http://jabber.org/protocol/chatstates").is_some()
        && find(stanza, b"<body").is_none()
    {
        return Some(None);
    }
    None
}

/// Held-back stanzas of an inactive session.
#[derive(Default)]
pub struct Csi {
    pub inactive: bool,
    held: Vec<(Option<Vec<u8>>, Bytes)>,
}

impl Csi {
    /// Filter a batch: returns what must be written now, in order.
    pub fn filter(&mut self, batch: Vec<Bytes>) -> Vec<Bytes> {
        if !self.inactive {
            return batch;
        }
        let mut out = Vec::new();
        for b in batch {
            match noise(&b) {
                Some(key) => {
                    if let Some(k) = &key {
                        self.held.retain(|(hk, _)| hk.as_ref() != Some(k));
                    }
                    self.held.push((key, b));
                    if self.held.len() > MAX_HELD {
                        out.extend(self.take());
                    }
                }
                None => {
                    out.extend(self.take());
                    out.push(b);
                }
            }
        }
        out
    }

    /// Everything held, oldest first (on `<active/>` or when important traffic arrives).
    pub fn take(&mut self) -> Vec<Bytes> {
        self.held.drain(..).map(|(_, b)| b).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_noise_dedupes_presence_and_flushes_before_important() {
        let mut c = Csi {
            inactive: true,
            ..Default::default()
        };
        let p1 = Bytes::from("<presence from='b@x/r' to='a@x'><show>away</show></presence>");
        let p2 =
            Bytes::from("<presence xmlns='jabber:client' from='b@x/r'><show>xa</show></presence>");
        let cs = Bytes::from(
            "<message from='b@x/r'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>",
        );
        let sub = Bytes::from("<presence type='subscribe' from='c@x'/>");
        let msg = Bytes::from("<message from='b@x/r'><body>hi</body></message>");
        assert!(c.filter(vec![p1, cs.clone(), p2.clone()]).is_empty());
        assert_eq!(
            c.filter(vec![sub.clone()]),
            vec![cs.clone(), p2.clone(), sub]
        );
        assert!(c.filter(vec![p2.clone()]).is_empty());
        assert_eq!(c.filter(vec![msg.clone()]), vec![p2, msg]);
        c.inactive = false;
        assert_eq!(c.filter(vec![cs.clone()]), vec![cs]);
    }
}
