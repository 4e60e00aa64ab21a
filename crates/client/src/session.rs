//! Sessions: read-your-writes and monotonic reads at any R, on any node.
//!
//! A [`Session`] remembers, per key, everything it wrote and read of the key as a
//! context the cluster issued (a *floor*). Its reads carry the floor; the node that
//! coordinates one answers only with a state at least as new, asking replicas past R
//! when the first answers are older, and says [`ClusterError::Behind`] when none of
//! them has caught up yet. The session then waits (1 ms, doubling, up to 50 ms) and
//! asks again, within the request's deadline; it never returns an older state. Its
//! writes carry the floor too, and the node answers with a new floor that covers both
//! (the write's own context still replaces only what it was given).
//!
//! Nothing is sticky: any node can serve a session read, and [`Session::token`] hands
//! the session to another process (a browser cookie, say) as text; a token is
//! untrusted input to the node, which refuses a floor it did not issue for that key.
//! A session remembers at most [`Session::with_capacity`] keys (default
//! [`SESSION_KEYS_DEFAULT`]); past that it forgets the key it touched longest ago, and
//! for that key it guarantees nothing more.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use qkv_proto::{Context, SessionFloor};

use crate::{Client, ClusterError, Error, Get, Put};

/// Keys a session remembers unless told otherwise.
pub const SESSION_KEYS_DEFAULT: usize = 1024;
/// Longest session token accepted, in characters.
pub const SESSION_TOKEN_CHARS_MAX: usize = 64 * 1024;
const TOKEN_VERSION: u8 = 1;

#[derive(Default)]
struct Floors {
    /// key → (floor, when it was last touched).
    by_key: HashMap<Vec<u8>, (SessionFloor, u64)>,
    /// when touched → key: the order in which keys are forgotten.
    by_age: BTreeMap<u64, Vec<u8>>,
    clock: u64,
    capacity: usize,
}

impl Floors {
    fn new(capacity: usize) -> Self {
        Floors { capacity: capacity.max(1), ..Default::default() }
    }

    fn get(&self, key: &[u8]) -> Option<SessionFloor> {
        self.by_key.get(key).map(|(f, _)| f.clone())
    }

    fn shrink_to(&mut self, capacity: usize) {
        self.capacity = capacity.max(1);
        while self.by_key.len() > self.capacity {
            let Some((_, oldest)) = self.by_age.pop_first() else { break };
            self.by_key.remove(&oldest);
        }
    }

    /// A read answered: see [`Session::saw`].
    fn saw(&mut self, key: &[u8], context: &Context, found: bool) {
        match self.by_key.get(key) {
            Some((old, _)) if !context.seen.covers_all(&old.context.seen) => {
                let old = old.clone();
                self.set(key, old);
            }
            _ => self.set(key, SessionFloor { context: context.clone(), deleted: !found }),
        }
    }

    fn token(&self) -> String {
        let entries: Vec<(serde_bytes::ByteBuf, &SessionFloor)> = self
            .by_age
            .values()
            .filter_map(|k| self.by_key.get(k).map(|(floor, _)| (serde_bytes::ByteBuf::from(k.clone()), floor)))
            .collect();
        let mut bytes = vec![TOKEN_VERSION];
        // Byte strings, integers and contexts always serialise.
        bytes.extend(rmp_serde::to_vec(&entries).expect("a session serialises"));
        URL_SAFE_NO_PAD.encode(bytes)
    }

    fn from_token(token: &str) -> Result<Floors, Error> {
        let bad = |why: &str| Error::Cluster(ClusterError::BadRequest(format!("invalid session token: {why}")));
        let token = token.trim();
        if token.len() > SESSION_TOKEN_CHARS_MAX {
            return Err(bad(&format!("longer than {SESSION_TOKEN_CHARS_MAX} characters")));
        }
        let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| bad("not base64url"))?;
        let entries: Vec<(serde_bytes::ByteBuf, SessionFloor)> = match bytes.split_first() {
            Some((&TOKEN_VERSION, rest)) => rmp_serde::from_slice(rest).map_err(|_| bad("corrupt"))?,
            Some((v, _)) => return Err(bad(&format!("version {v}, this client reads {TOKEN_VERSION}"))),
            None => return Err(bad("empty")),
        };
        let mut f = Floors::new(SESSION_KEYS_DEFAULT.max(entries.len()));
        for (key, floor) in entries {
            f.set(&key, floor);
        }
        Ok(f)
    }

    fn set(&mut self, key: &[u8], floor: SessionFloor) {
        self.clock += 1;
        if let Some((_, at)) = self.by_key.remove(key) {
            self.by_age.remove(&at);
        }
        while self.by_key.len() >= self.capacity.max(1) {
            let Some((_, oldest)) = self.by_age.pop_first() else { break };
            self.by_key.remove(&oldest);
        }
        self.by_key.insert(key.to_vec(), (floor, self.clock));
        self.by_age.insert(self.clock, key.to_vec());
    }
}

/// A client session: reads in it never return a state older than what it wrote or
/// read before, for each key. Cheap to clone; clones share the session.
#[derive(Clone)]
pub struct Session {
    client: Client,
    floors: Arc<Mutex<Floors>>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("keys", &self.len()).finish()
    }
}

impl Session {
    pub(crate) fn new(client: Client) -> Self {
        Session { client, floors: Arc::new(Mutex::new(Floors::new(SESSION_KEYS_DEFAULT))) }
    }

    /// Remember at most `keys` keys (at least one); past that the key touched longest
    /// ago is forgotten.
    pub fn with_capacity(self, keys: usize) -> Self {
        self.lock().shrink_to(keys);
        self
    }

    /// Read `key` in this session (set options on it, then `.await` it).
    pub fn get(&self, key: impl Into<Vec<u8>>) -> Get {
        self.client.get(key).session(self)
    }

    /// Write `value` under `key` in this session.
    pub fn put(&self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Put {
        self.client.put(key, value).session(self)
    }

    /// Delete `key` in this session.
    pub fn delete(&self, key: impl Into<Vec<u8>>) -> Put {
        self.client.delete(key).session(self)
    }

    /// Keys remembered.
    pub fn len(&self) -> usize {
        self.lock().by_key.len()
    }

    /// True when the session has written and read nothing yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The session as text, to resume it elsewhere with [`Client::resume_session`]
    /// (URL- and cookie-safe: base64url).
    pub fn token(&self) -> String {
        self.lock().token()
    }

    pub(crate) fn resume(client: Client, token: &str) -> Result<Session, Error> {
        let floors = Floors::from_token(token)?;
        Ok(Session { client, floors: Arc::new(Mutex::new(floors)) })
    }

    /// What the session knows of `key`, for a request.
    pub(crate) fn floor(&self, key: &[u8]) -> Option<SessionFloor> {
        self.lock().get(key)
    }

    /// A session read answered: the answer is the new floor when it covers the old one
    /// (the node checked it is at least as new; an answer with no value may stand for a
    /// delete whose tombstone was purged, and then the old floor stays).
    pub(crate) fn saw(&self, key: &[u8], context: &Context, found: bool) {
        self.lock().saw(key, context, found);
    }

    /// A session write answered with `floor` (the node's merge of the old floor and the write).
    pub(crate) fn wrote(&self, key: &[u8], floor: Context, deleted: bool) {
        self.lock().set(key, SessionFloor { context: floor, deleted });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Floors> {
        self.floors.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qkv_proto::{Dot, Seen, VersionVector};

    fn ctx(counter: u64) -> Context {
        let mut vv = VersionVector::new();
        vv.add(Dot { actor: 1, counter });
        Context { seen: Seen::of(vv), mac: vec![7; 16] }
    }

    fn floor(c: Context, deleted: bool) -> SessionFloor {
        SessionFloor { context: c, deleted }
    }

    #[test]
    fn a_token_resumes_the_session_and_bad_tokens_are_clear_errors() {
        let mut s = Floors::new(8);
        s.set(b"a", floor(ctx(2), false));
        s.saw(b"b", &ctx(1), false);
        let again = Floors::from_token(&s.token()).unwrap();
        assert_eq!(again.get(b"a").unwrap().context, ctx(2));
        assert!(again.get(b"b").unwrap().deleted);
        for bad in ["", "!!!", &URL_SAFE_NO_PAD.encode([9u8, 1, 2]), &URL_SAFE_NO_PAD.encode([1u8, 0xc1])] {
            let e = Floors::from_token(bad).err().unwrap().to_string();
            assert!(e.contains("invalid session token"), "{e}");
        }
        let long = "A".repeat(SESSION_TOKEN_CHARS_MAX + 1);
        assert!(Floors::from_token(&long).err().unwrap().to_string().contains("longer than"));
    }

    #[test]
    fn floors_only_move_forward_and_the_oldest_key_goes_first() {
        let mut s = Floors::new(2);
        s.set(b"a", floor(ctx(3), false));
        // An older answer (a purged delete read as nothing) leaves the floor where it was.
        s.saw(b"a", &Context::empty(), false);
        assert_eq!(s.get(b"a").unwrap().context, ctx(3));
        s.saw(b"a", &ctx(4), true);
        assert_eq!(s.get(b"a").unwrap(), floor(ctx(4), false));
        s.set(b"b", floor(ctx(1), false));
        s.set(b"c", floor(ctx(1), false));
        assert_eq!(s.by_key.len(), 2);
        assert!(s.get(b"a").is_none(), "touched longest ago");
        s.shrink_to(1);
        assert_eq!(s.get(b"c").unwrap(), floor(ctx(1), false));
        assert!(s.get(b"b").is_none());
    }
}
