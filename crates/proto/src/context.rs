//! The causal context a client gets with every read and write and passes back.
//!
//! To the client it is an opaque token:
//! `base64url(version byte ‖ msgpack(Seen) ‖ MAC)`, where the MAC is HMAC-SHA256,
//! cut to 16 bytes, over the key and the [`Seen`] under the cluster's secret
//! (`certs/cluster.secret`, made by `qkv certs`, shared by every node).
//!
//! A context is untrusted input: it decides which siblings a write deletes. So a
//! node accepts only a context the cluster issued *for that key*: a forged one
//! (invented counters or actors), a corrupted one, or one taken from another key
//! fails the MAC and the write is refused, changing nothing. Validation alone
//! could bound a context's size but could not tell a plausible forgery, or a
//! genuine context of another key, from the real thing; a MAC tells all three
//! apart for 16 bytes a token and one HMAC a write (about a microsecond).
//! The empty context (a blind write) needs no MAC.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

use crate::{Error, Seen, VersionVector};

const CONTEXT_VERSION: u8 = 2;
/// Bytes of the MAC in a token.
pub const MAC_BYTES: usize = 16;
/// Bytes of a cluster secret.
pub const SECRET_BYTES: usize = 32;
/// Longest token accepted, in characters.
pub const CONTEXT_CHARS_MAX: usize = 8192;
/// Most actors (clock entries plus single dots) a context may name.
pub const CONTEXT_ACTORS_MAX: usize = 256;

/// The cluster's secret that authenticates contexts.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub [u8; SECRET_BYTES]);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    /// Parse the secret file's text: 64 hex digits.
    pub fn parse(text: &str) -> Result<Secret, String> {
        let t = text.trim();
        if t.len() != SECRET_BYTES * 2 || !t.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("a cluster secret is {} hex digits", SECRET_BYTES * 2));
        }
        let mut out = [0u8; SECRET_BYTES];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(&t[2 * i..2 * i + 2], 16).map_err(|e| e.to_string())?;
        }
        Ok(Secret(out))
    }

    /// The secret file's text.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// An opaque causal context. Pass the one from a read (or a write's answer) to the
/// next write of the same key.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Context {
    /// What the holder has seen of the key.
    pub seen: Seen,
    /// The cluster's MAC over the key and `seen` (zero for the empty context).
    #[serde(with = "serde_bytes")]
    pub mac: Vec<u8>,
}

impl Context {
    /// The empty context: a write with it overwrites nothing and becomes a sibling.
    pub fn empty() -> Self {
        Self::default()
    }

    /// True when the context has seen nothing.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// The version vector part (for tools and tests; clients treat contexts as opaque).
    pub fn clock(&self) -> &VersionVector {
        &self.seen.vv
    }

    /// A context for `key` that has seen `seen`, signed with `secret`.
    ///
    /// A context names at most [`CONTEXT_ACTORS_MAX`] actors: beyond that its single dots
    /// are left out, which only makes a write with it delete less, never more.
    pub fn issue(secret: &Secret, key: &[u8], mut seen: Seen) -> Context {
        debug_assert!(seen.is_normal(), "contexts are issued in normal form");
        let room = CONTEXT_ACTORS_MAX.saturating_sub(seen.vv.0.len());
        seen.dots.truncate(room);
        if seen.is_empty() {
            return Context::empty();
        }
        let mac = mac(secret, key, &seen);
        Context { seen, mac }
    }

    /// What the context has seen, if the cluster issued it for `key`; a clear error otherwise.
    pub fn verify(&self, secret: &Secret, key: &[u8]) -> Result<&Seen, Error> {
        if self.seen.actors() > CONTEXT_ACTORS_MAX {
            return Err(Error::BadRequest(format!(
                "invalid context: it names {} actors, at most {CONTEXT_ACTORS_MAX} are accepted",
                self.seen.actors()
            )));
        }
        if self.seen.is_empty() {
            return Ok(&self.seen);
        }
        if !self.seen.is_normal() || self.mac.len() != MAC_BYTES || !mac_equal(&mac(secret, key, &self.seen), &self.mac)
        {
            return Err(Error::BadRequest(format!(
                "invalid context for key {:?}: this cluster did not issue it for this key (forged, corrupted, \
                 or taken from another key); read the key and use that context",
                String::from_utf8_lossy(&key[..key.len().min(64)])
            )));
        }
        Ok(&self.seen)
    }

    /// The token text.
    pub fn encode(&self) -> String {
        let mut bytes = vec![CONTEXT_VERSION];
        // Integers and byte strings always serialise.
        bytes.extend(rmp_serde::to_vec(&self.seen).expect("a context serialises"));
        bytes.extend_from_slice(&self.mac);
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Parse a token made by [`Context::encode`] (its MAC is checked by the node).
    pub fn decode(token: &str) -> Result<Self, Error> {
        let bad = |why: &str| Error::BadRequest(format!("invalid context token: {why}"));
        let token = token.trim();
        if token.len() > CONTEXT_CHARS_MAX {
            return Err(bad("too long"));
        }
        let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| bad("not base64url"))?;
        match bytes.split_first() {
            Some((&CONTEXT_VERSION, rest)) => {
                let mut cursor = std::io::Cursor::new(rest);
                let seen: Seen = rmp_serde::from_read(&mut cursor).map_err(|_| bad("corrupt"))?;
                let mac = rest[cursor.position() as usize..].to_vec();
                if !(mac.is_empty() && seen.is_empty()) && mac.len() != MAC_BYTES {
                    return Err(bad("corrupt"));
                }
                Ok(Context { seen, mac })
            }
            Some((1, _)) => Err(bad("made by an older release without authentication: read the key again")),
            Some((v, _)) => Err(bad(&format!("unknown version {v}"))),
            None => Err(bad("empty")),
        }
    }
}

fn mac(secret: &Secret, key: &[u8], seen: &Seen) -> Vec<u8> {
    let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret.0);
    let mut ctx = ring::hmac::Context::with_key(&k);
    ctx.update(&(key.len() as u64).to_be_bytes());
    ctx.update(key);
    ctx.update(&rmp_serde::to_vec(seen).expect("a context serialises"));
    ctx.sign().as_ref()[..MAC_BYTES].to_vec()
}

/// Constant-time comparison.
fn mac_equal(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Dot;

    fn secret() -> Secret {
        Secret([7; SECRET_BYTES])
    }

    fn seen() -> Seen {
        let mut vv = VersionVector::new();
        vv.0.insert(1, 7);
        vv.0.insert(3, 2);
        let mut s = Seen::of(vv);
        s.add_dot(Dot { actor: 2, counter: 9 });
        s
    }

    #[test]
    fn round_trip_and_rejects_garbage() {
        let c = Context::issue(&secret(), b"k", seen());
        assert_eq!(Context::decode(&c.encode()).unwrap(), c);
        assert_eq!(Context::decode(&Context::empty().encode()).unwrap(), Context::empty());
        assert!(Context::decode("!!").is_err());
        assert!(Context::decode("").is_err());
        assert!(Context::decode(&URL_SAFE_NO_PAD.encode([9u8, 1, 2])).is_err());
        assert!(Context::decode(&URL_SAFE_NO_PAD.encode([2u8, 0xc1])).is_err());
        let old = Context::decode(&URL_SAFE_NO_PAD.encode([1u8, 0x80])).unwrap_err().to_string();
        assert!(old.contains("older release"), "{old}");
    }

    #[test]
    fn only_a_context_issued_for_the_key_verifies() {
        let c = Context::issue(&secret(), b"k", seen());
        assert_eq!(c.verify(&secret(), b"k").unwrap(), &seen());
        let other_key = c.verify(&secret(), b"j").unwrap_err().to_string();
        assert!(other_key.contains("another key"), "{other_key}");
        assert!(c.verify(&Secret([8; SECRET_BYTES]), b"k").is_err(), "another cluster's secret");
        let mut forged = c.clone();
        forged.seen.vv.0.insert(1, u64::MAX - 1);
        assert!(forged.verify(&secret(), b"k").is_err(), "an invented counter");
        let mut huge = Context::empty();
        for a in 0..1000 {
            huge.seen.vv.0.insert(a, 1);
        }
        assert!(huge.verify(&secret(), b"k").unwrap_err().to_string().contains("actors"));
        assert!(Context::empty().verify(&secret(), b"k").is_ok(), "a blind write needs no MAC");
    }

    #[test]
    fn secrets_parse_from_hex() {
        let s = secret();
        assert_eq!(Secret::parse(&s.to_hex()).unwrap(), s);
        assert!(Secret::parse("abc").is_err());
        assert!(format!("{s:?}").contains(".."), "never printed");
    }
}
