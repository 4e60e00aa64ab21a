//! Framing: `u32 big-endian length ‖ version byte ‖ msgpack body`.
//!
//! The length is checked against the limit before anything is allocated;
//! the version byte is checked before the body is decoded.
//!
//! Bodies are compact msgpack: struct fields by position, not by name (enum
//! variants keep their names). The decoder takes either form, so a node reads the
//! named frames of earlier releases, and they read these. A field added to a
//! message goes last, with a serde default, and is never skipped when serialising
//! unless it is last: a skipped field in the middle would shift the ones after it.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::Error;

/// Protocol version carried in every frame.
pub const PROTOCOL_VERSION: u8 = 1;
/// Bytes of the length prefix.
pub const LEN_BYTES: usize = 4;
/// Default frame limit of the client: room for the largest state a node holds at its
/// default limits (twice the 8 MiB per-key limit, the key and the message around it).
pub const FRAME_BYTES_MAX_DEFAULT: usize = 24 * 1024 * 1024;

/// Encode `msg` as a whole frame, length prefix included.
pub fn encode<T: Serialize>(msg: &T, frame_bytes_max: usize) -> Result<Vec<u8>, Error> {
    let mut out = vec![0u8; LEN_BYTES];
    out.push(PROTOCOL_VERSION);
    rmp_serde::encode::write(&mut out, msg).map_err(|e| Error::BadRequest(format!("cannot encode message: {e}")))?;
    let body = out.len() - LEN_BYTES;
    if body > frame_bytes_max {
        return Err(Error::TooLarge { what: "frame".into(), size: body as u64, max: frame_bytes_max as u64 });
    }
    out[..LEN_BYTES].copy_from_slice(&(body as u32).to_be_bytes());
    Ok(out)
}

/// Read the body length from a length prefix, refusing frames over the limit or empty ones.
pub fn decode_len(prefix: [u8; LEN_BYTES], frame_bytes_max: usize) -> Result<usize, Error> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len > frame_bytes_max {
        return Err(Error::TooLarge { what: "frame".into(), size: len as u64, max: frame_bytes_max as u64 });
    }
    if len == 0 {
        return Err(Error::BadRequest("empty frame".into()));
    }
    Ok(len)
}

/// Decode a frame body (version byte and message).
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, Error> {
    match body.split_first() {
        Some((&PROTOCOL_VERSION, rest)) => {
            rmp_serde::from_slice(rest).map_err(|e| Error::BadRequest(format!("malformed frame: {e}")))
        }
        Some((v, _)) => {
            Err(Error::BadRequest(format!("unsupported protocol version {v} (this node speaks {PROTOCOL_VERSION})")))
        }
        None => Err(Error::BadRequest("empty frame".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Request, Response};

    #[test]
    fn round_trip() {
        let req = Request::Ping { from: 3, gossip: vec![], view: Default::default() };
        let f = encode(&req, 1024).unwrap();
        let len = decode_len(f[..4].try_into().unwrap(), 1024).unwrap();
        assert_eq!(len, f.len() - 4);
        assert_eq!(decode_body::<Request>(&f[4..]).unwrap(), req);
    }

    #[test]
    fn limits_and_garbage_are_errors() {
        assert!(matches!(decode_len(2048u32.to_be_bytes(), 1024), Err(Error::TooLarge { .. })));
        assert!(decode_len([0; 4], 1024).is_err());
        assert!(decode_body::<Request>(&[PROTOCOL_VERSION, 0xc1, 0xff]).is_err());
        assert!(decode_body::<Request>(&[9, 0x90]).is_err());
        assert!(decode_body::<Response>(&[]).is_err());
        let big = Request::ReplicaGet { key: vec![0; 4096] };
        assert!(matches!(encode(&big, 1024), Err(Error::TooLarge { .. })));
    }
}
