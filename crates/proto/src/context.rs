//! The causal context a client gets with every read and write and passes back.
//!
//! To the client it is an opaque token: `base64url(version byte ‖ msgpack(VersionVector))`.
//! The version byte lets later releases change the encoding and still read old tokens.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

use crate::{Error, VersionVector};

const CONTEXT_VERSION: u8 = 1;
/// Longest token accepted, in characters (a clock has one entry per node).
pub const CONTEXT_CHARS_MAX: usize = 4096;

/// An opaque causal context. Pass the one from a read to the next write of that key.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Context(pub VersionVector);

impl Context {
    /// The empty context: a write with it overwrites nothing and becomes a sibling.
    pub fn empty() -> Self {
        Self::default()
    }

    /// True when the context has seen nothing.
    pub fn is_empty(&self) -> bool {
        self.0.0.is_empty()
    }

    /// The token text.
    pub fn encode(&self) -> String {
        let mut bytes = vec![CONTEXT_VERSION];
        // A BTreeMap of integers always serialises.
        bytes.extend(rmp_serde::to_vec(&self.0).expect("version vector serialises"));
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Parse a token made by [`Context::encode`].
    pub fn decode(token: &str) -> Result<Self, Error> {
        let bad = |why: &str| Error::BadRequest(format!("invalid context token: {why}"));
        if token.len() > CONTEXT_CHARS_MAX {
            return Err(bad("too long"));
        }
        let bytes = URL_SAFE_NO_PAD.decode(token.trim()).map_err(|_| bad("not base64url"))?;
        match bytes.split_first() {
            Some((&CONTEXT_VERSION, rest)) => {
                let vv: VersionVector = rmp_serde::from_slice(rest).map_err(|_| bad("corrupt"))?;
                Ok(Context(vv))
            }
            Some((v, _)) => Err(bad(&format!("unknown version {v}"))),
            None => Err(bad("empty")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejects_garbage() {
        let mut vv = VersionVector::new();
        vv.0.insert(1, 7);
        vv.0.insert(3, 2);
        let c = Context(vv);
        assert_eq!(Context::decode(&c.encode()).unwrap(), c);
        assert_eq!(Context::decode(&Context::empty().encode()).unwrap(), Context::empty());
        assert!(Context::decode("!!").is_err());
        assert!(Context::decode("").is_err());
        assert!(Context::decode(&URL_SAFE_NO_PAD.encode([9u8, 1, 2])).is_err());
        assert!(Context::decode(&URL_SAFE_NO_PAD.encode([1u8, 0xc1])).is_err());
    }
}
