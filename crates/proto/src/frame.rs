//! Framing: `u32 big-endian length ‖ version byte ‖ msgpack body`.
//!
//! Two versions share the framing. Version 1 carries one message: a stream holds one
//! request and its answer. Version 2 ([`MUX_VERSION`]) carries `[id, message]`: a
//! long-lived stream carries many requests, each answered with its id, in any order
//! (see `qkv_transport`). A node of an earlier release answers a version 2 frame with
//! a version 1 error, and the sender goes back to a stream per request.
//!
//! The length is checked against the limit before anything is allocated;
//! the version byte is checked before the body is decoded.
//!
//! Bodies are msgpack. The hot messages (reads, writes and replica traffic, see
//! [`Message::compact`]) go compact: struct fields by position, not by name (enum
//! variants keep their names); their shape is fixed for a protocol version (a test
//! pins it): a field added to one changes the version, since a reader of the version
//! before would refuse the longer array, with one exception: an optional field added
//! last and skipped when empty (`session` of reads, writes and write answers) leaves
//! every message without it as it was, and only a message that carries it is refused
//! by an earlier release ("malformed frame"; a session needs nodes that know
//! sessions). The others (status, stats, pings, errors,
//! membership) keep their field names, so a field added with a serde default is read
//! by both releases. The decoder takes either form. Within a compact message no field
//! is skipped when serialising unless it is the last (a skipped field in the middle
//! would shift the ones after it).

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::Error;

/// Protocol version carried in every frame.
pub const PROTOCOL_VERSION: u8 = 1;
/// Version of the frames of a multiplexed stream: the body is `[id, message]`.
pub const MUX_VERSION: u8 = 2;
/// Bytes of the length prefix.
pub const LEN_BYTES: usize = 4;
/// Default frame limit of the client: room for the largest state a node holds at its
/// default limits (twice the 8 MiB per-key limit, the key and the message around it).
pub const FRAME_BYTES_MAX_DEFAULT: usize = 24 * 1024 * 1024;

/// A message of the wire: whether it goes compact (see the module docs).
pub trait Message: Serialize {
    /// Fields by position (`true`) or by name.
    fn compact(&self) -> bool;
}

impl Message for crate::Request {
    fn compact(&self) -> bool {
        use crate::Request as R;
        matches!(
            self,
            R::Get(_)
                | R::Put(_)
                | R::ReplicaGet { .. }
                | R::ReplicaDigest { .. }
                | R::ReplicaPut { .. }
                | R::ReplicaHint { .. }
                | R::ReplicaPutBatch { .. }
                | R::HintGet { .. }
        )
    }
}

impl Message for crate::Response {
    fn compact(&self) -> bool {
        use crate::Response as R;
        matches!(
            self,
            R::Get(_)
                | R::Put(_)
                | R::ReplicaState(_)
                | R::ReplicaAck
                | R::ReplicaBatchAck { .. }
                | R::Digest(_)
                | R::Hints(_)
        )
    }
}

fn write_body<T: Message>(out: &mut Vec<u8>, msg: &T) -> Result<(), Error> {
    let written =
        if msg.compact() { rmp_serde::encode::write(out, msg) } else { rmp_serde::encode::write_named(out, msg) };
    written.map_err(|e| Error::BadRequest(format!("cannot encode message: {e}")))
}

/// Fill in the length prefix of a frame written after [`LEN_BYTES`] zeros, refusing
/// one over the limit.
fn with_length(mut out: Vec<u8>, frame_bytes_max: usize) -> Result<Vec<u8>, Error> {
    let body = out.len() - LEN_BYTES;
    if body > frame_bytes_max {
        return Err(Error::TooLarge { what: "frame".into(), size: body as u64, max: frame_bytes_max as u64 });
    }
    out[..LEN_BYTES].copy_from_slice(&(body as u32).to_be_bytes());
    Ok(out)
}

/// Encode `msg` as a whole frame, length prefix included.
pub fn encode<T: Message>(msg: &T, frame_bytes_max: usize) -> Result<Vec<u8>, Error> {
    let mut out = vec![0u8; LEN_BYTES];
    out.push(PROTOCOL_VERSION);
    write_body(&mut out, msg)?;
    with_length(out, frame_bytes_max)
}

/// Encode `msg` as a whole frame of a multiplexed stream, with its request id.
pub fn encode_mux<T: Message>(id: u64, msg: &T, frame_bytes_max: usize) -> Result<Vec<u8>, Error> {
    let mut out = vec![0u8; LEN_BYTES];
    out.push(MUX_VERSION);
    let bad = |e: String| Error::BadRequest(format!("cannot encode message: {e}"));
    rmp::encode::write_array_len(&mut out, 2).map_err(|e| bad(e.to_string()))?;
    rmp::encode::write_uint(&mut out, id).map_err(|e| bad(e.to_string()))?;
    write_body(&mut out, msg)?;
    with_length(out, frame_bytes_max)
}

/// Decode the body of a multiplexed frame: its id, and its message or why that did
/// not decode (the id alone is enough to answer the error). `Err`: not even an id.
pub fn decode_mux_body<T: DeserializeOwned>(body: &[u8]) -> Result<(u64, Result<T, Error>), Error> {
    let Some((&MUX_VERSION, mut rest)) = body.split_first() else {
        return Err(Error::BadRequest("not a multiplexed frame".into()));
    };
    let bad = |what: &str| Error::BadRequest(format!("malformed multiplexed frame: {what}"));
    match rmp::decode::read_array_len(&mut rest) {
        Ok(2) => {}
        _ => return Err(bad("not an [id, message] pair")),
    }
    let id: u64 = rmp::decode::read_int(&mut rest).map_err(|_| bad("no request id"))?;
    let msg = rmp_serde::from_slice(rest).map_err(|e| Error::BadRequest(format!("malformed frame: {e}")));
    Ok((id, msg))
}

/// The id of a multiplexed frame from the first bytes of its body (16 are enough),
/// for a frame whose message is not read (refused, or over a limit).
pub fn mux_id(head: &[u8]) -> Option<u64> {
    let mut rest = head.strip_prefix(&[MUX_VERSION])?;
    match rmp::decode::read_array_len(&mut rest) {
        Ok(2) => rmp::decode::read_int(&mut rest).ok(),
        _ => None,
    }
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
        assert!(matches!(encode_mux(1, &big, 1024), Err(Error::TooLarge { .. })));
    }

    #[test]
    fn multiplexed_frames_carry_their_id_even_when_the_message_is_garbage() {
        let req = Request::ReplicaGet { key: b"k".to_vec() };
        let f = encode_mux(u64::MAX - 3, &req, 1024).unwrap();
        assert_eq!(decode_len(f[..4].try_into().unwrap(), 1024).unwrap(), f.len() - 4);
        let (id, got) = decode_mux_body::<Request>(&f[4..]).unwrap();
        assert_eq!((id, got.unwrap()), (u64::MAX - 3, req.clone()));
        assert_eq!(mux_id(&f[4..20]), Some(u64::MAX - 3), "the id from the first 16 bytes");
        assert_eq!(mux_id(&f[4..6]), None);
        // A message that does not decode still names its id, to answer the error to.
        let mut broken = f[4..f.len() - 2].to_vec();
        broken.push(0xc1);
        let (id, got) = decode_mux_body::<Request>(&broken).unwrap();
        assert_eq!(id, u64::MAX - 3);
        assert!(matches!(got, Err(Error::BadRequest(_))));
        // Neither a version 1 frame nor garbage is a multiplexed frame; a version 1
        // reader refuses a multiplexed one (what a node of an earlier release does).
        assert!(decode_mux_body::<Request>(&encode(&req, 1024).unwrap()[4..]).is_err());
        assert!(decode_mux_body::<Request>(&[MUX_VERSION, 0x92]).is_err());
        assert!(decode_mux_body::<Request>(&[]).is_err());
        assert!(matches!(decode_body::<Request>(&f[4..]), Err(Error::BadRequest(m)) if m.contains("version 2")));
    }

    /// The compact messages' shape is fixed for a protocol version: a reader of it
    /// refuses an array longer than its struct. This pins it; a change here must come
    /// with a new version (and its fallback).
    #[test]
    fn the_compact_messages_keep_their_shape() {
        use crate::{Context, Dot, DvvSet, GetReply, GetRequest, Level, PutReply, PutRequest, VersionVector};
        let hex = |m: &dyn Fn(&mut Vec<u8>)| {
            let mut v = vec![];
            m(&mut v);
            v.iter().map(|b| format!("{b:02x}")).collect::<String>()
        };
        let mut set = DvvSet::new();
        set.update(&VersionVector::new(), Some(b"v".to_vec()), 7);
        let get = Request::Get(GetRequest {
            key: b"k".to_vec(),
            r: Level::One,
            strict: false,
            timeout_ms: Some(5),
            session: None,
        });
        let put = Request::Put(PutRequest {
            key: b"k".to_vec(),
            value: Some(b"v".to_vec()),
            context: Context::empty(),
            w: Level::Quorum,
            strict: true,
            timeout_ms: None,
            forwarded: false,
            write_id: Some(9),
            session: None,
        });
        let replica = Request::ReplicaPut { key: b"k".to_vec(), set: set.clone() };
        let got = Response::Get(GetReply { values: vec![], found: false, context: Context::empty(), replied: 1 });
        let put_reply = Response::Put(PutReply {
            context: Context::empty(),
            dot: Dot { actor: 7, counter: 1 },
            home_acks: vec![1],
            standin_acks: vec![],
            coordinator: 1,
            session: None,
        });
        let body = |m: &dyn Fn(&mut Vec<u8>) -> Result<(), Error>| {
            let mut v = vec![];
            m(&mut v).unwrap();
            hex(&|out| out.extend_from_slice(&v))
        };
        let shapes = [
            body(&|v| write_body(v, &get)),
            body(&|v| write_body(v, &put)),
            body(&|v| write_body(v, &replica)),
            body(&|v| write_body(v, &got)),
            body(&|v| write_body(v, &put_reply)),
        ];
        let pinned = [
            "81a347657494c4016ba34f6e65c205",
            "81a350757498c4016bc40176929180c400a651756f72756dc3c0c209",
            "81aa5265706c69636150757492c4016b93810701909192920701c40176",
            "81a34765749490c2929180c40001",
            "81a350757495929180c40092070191019001",
        ];
        for (got, want) in shapes.iter().zip(pinned) {
            assert_eq!(got, want);
        }
    }

    #[test]
    fn session_fields_round_trip_and_puts_of_the_earlier_release_still_decode() {
        use crate::{Context, Dot, GetRequest, Level, PutRequest, Seen, SessionFloor, VersionVector};
        let mut vv = VersionVector::new();
        vv.add(Dot { actor: 7, counter: 3 });
        let ctx = Context { seen: Seen::of(vv), mac: vec![1; 16] };
        let get = Request::Get(GetRequest {
            key: b"k".to_vec(),
            r: Level::One,
            strict: false,
            timeout_ms: Some(5),
            session: Some(SessionFloor { context: ctx.clone(), deleted: true }),
        });
        let put = Request::Put(PutRequest {
            key: b"k".to_vec(),
            value: None,
            context: Context::empty(),
            w: Level::One,
            strict: false,
            timeout_ms: None,
            forwarded: false,
            write_id: None,
            session: Some(ctx),
        });
        for req in [get, put] {
            let f = encode(&req, 1024).unwrap();
            assert_eq!(decode_body::<Request>(&f[4..]).unwrap(), req);
        }
        // A put of the earlier release (write id left out) still decodes.
        let old = "81a350757497c4016bc40176929180c400a651756f72756dc3c0c2";
        let mut bytes = vec![PROTOCOL_VERSION];
        bytes.extend((0..old.len()).step_by(2).map(|i| u8::from_str_radix(&old[i..i + 2], 16).unwrap()));
        match decode_body::<Request>(&bytes).unwrap() {
            Request::Put(p) => assert_eq!((p.write_id, p.session), (None, None)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn compact_bodies_keep_every_field_of_a_state_in_place() {
        use crate::{DvvSet, VersionVector};
        // A DVV set with an empty cloud (the field in the middle) round-trips by position.
        let mut set = DvvSet::new();
        set.update(&VersionVector::new(), Some(b"v".to_vec()), 7);
        let req = Request::ReplicaPut { key: b"k".to_vec(), set };
        let f = encode(&req, 1024).unwrap();
        assert_eq!(decode_body::<Request>(&f[4..]).unwrap(), req);
        // And a named body, as an earlier release sent, still decodes.
        let mut named = vec![PROTOCOL_VERSION];
        rmp_serde::encode::write_named(&mut named, &req).unwrap();
        assert_eq!(decode_body::<Request>(&named).unwrap(), req);
    }
}
