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
//! for that key it guarantees nothing more. It also forgets what it learnt of a key
//! [`SESSION_FLOOR_TTL_DEFAULT`] (10 minutes, [`Session::with_ttl`]) ago and has not
//! seen again since: replication lag is milliseconds to seconds, while a deleted
//! value's tombstone is purged only hours later (`tombstone_grace_ms`, 4 h by default),
//! so a floor never outlives the history it names (a floor naming a purged delete
//! could never be met again).
//!
//! Requests of one session on one key run one at a time (others wait their turn), so
//! the floor each leaves behind covers the ones before it.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use qkv_proto::{Context, SessionFloor};

use crate::{Client, ClusterError, Error, Get, Put};

/// Keys a session remembers unless told otherwise.
pub const SESSION_KEYS_DEFAULT: usize = 1024;
/// How long a session keeps what it learnt of a key unless told otherwise.
pub const SESSION_FLOOR_TTL_DEFAULT: Duration = Duration::from_secs(600);
/// Locks that take a session's requests on one key one at a time (keys share them by hash).
const KEY_LOCKS: usize = 64;
/// Longest session token accepted, in characters.
pub const SESSION_TOKEN_CHARS_MAX: usize = 64 * 1024;
const TOKEN_VERSION: u8 = 1;

/// A key's floor, and since when (wall clock, ms) the oldest knowledge in it dates.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct Dated {
    floor: SessionFloor,
    since_ms: u64,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

#[derive(Default)]
struct Floors {
    /// key → (floor, when it was last touched).
    by_key: HashMap<Vec<u8>, (Dated, u64)>,
    /// when touched → key: the order in which keys are forgotten.
    by_age: BTreeMap<u64, Vec<u8>>,
    clock: u64,
    capacity: usize,
    ttl_ms: u64,
}

impl Floors {
    fn new(capacity: usize) -> Self {
        Floors { capacity: capacity.max(1), ttl_ms: SESSION_FLOOR_TTL_DEFAULT.as_millis() as u64, ..Default::default() }
    }

    /// The floor of `key` at `now`, unless it expired (then it is forgotten).
    fn get_at(&mut self, key: &[u8], now: u64) -> Option<Dated> {
        let (d, _) = self.by_key.get(key)?;
        if now.saturating_sub(d.since_ms) <= self.ttl_ms {
            return Some(d.clone());
        }
        self.remove(key);
        None
    }

    /// Forget `key`.
    fn remove(&mut self, key: &[u8]) {
        if let Some((_, at)) = self.by_key.remove(key) {
            self.by_age.remove(&at);
        }
    }

    #[cfg(test)]
    fn get(&mut self, key: &[u8]) -> Option<SessionFloor> {
        self.get_at(key, now_ms()).map(|d| d.floor)
    }

    fn shrink_to(&mut self, capacity: usize) {
        self.capacity = capacity.max(1);
        while self.by_key.len() > self.capacity {
            let Some((_, oldest)) = self.by_age.pop_first() else { break };
            self.by_key.remove(&oldest);
        }
    }

    /// A read answered: see [`Session::saw`].
    fn saw_at(&mut self, key: &[u8], context: &Context, found: bool, now: u64) {
        match self.get_at(key, now) {
            Some(old) if !context.seen.covers_all(&old.floor.context.seen) => self.set(key, old),
            _ => {
                let floor = SessionFloor { context: context.clone(), deleted: !found };
                self.set(key, Dated { floor, since_ms: now })
            }
        }
    }

    fn saw(&mut self, key: &[u8], context: &Context, found: bool) {
        self.saw_at(key, context, found, now_ms());
    }

    /// A write answered with `floor`: it covers the floor the write was sent with,
    /// whose age it keeps (`sent`: that floor's `since_ms`, `None` if it had none).
    fn wrote_at(&mut self, key: &[u8], floor: SessionFloor, sent: Option<u64>, now: u64) {
        self.set(key, Dated { floor, since_ms: sent.unwrap_or(now) });
    }

    /// The newest keys that fit in [`SESSION_TOKEN_CHARS_MAX`] characters.
    fn token(&self) -> String {
        let mut entries: Vec<(serde_bytes::ByteBuf, &Dated)> = self
            .by_age
            .values()
            .filter_map(|k| self.by_key.get(k).map(|(floor, _)| (serde_bytes::ByteBuf::from(k.clone()), floor)))
            .collect();
        loop {
            let mut bytes = vec![TOKEN_VERSION];
            // Byte strings, integers and contexts always serialise.
            bytes.extend(rmp_serde::to_vec(&entries).expect("a session serialises"));
            let token = URL_SAFE_NO_PAD.encode(bytes);
            if token.len() <= SESSION_TOKEN_CHARS_MAX || entries.is_empty() {
                return token;
            }
            // Too long: the oldest tenth goes.
            entries.drain(..entries.len().div_ceil(10));
        }
    }

    fn from_token(token: &str) -> Result<Floors, Error> {
        let bad = |why: &str| Error::Cluster(ClusterError::BadRequest(format!("invalid session token: {why}")));
        let token = token.trim();
        if token.len() > SESSION_TOKEN_CHARS_MAX {
            return Err(bad(&format!("longer than {SESSION_TOKEN_CHARS_MAX} characters")));
        }
        let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| bad("not base64url"))?;
        let entries: Vec<(serde_bytes::ByteBuf, Dated)> = match bytes.split_first() {
            Some((&TOKEN_VERSION, rest)) => rmp_serde::from_slice(rest).map_err(|_| bad("corrupt"))?,
            Some((v, _)) => return Err(bad(&format!("version {v}, this client reads {TOKEN_VERSION}"))),
            None => return Err(bad("empty")),
        };
        let mut f = Floors::new(SESSION_KEYS_DEFAULT.max(entries.len()));
        let now = now_ms();
        for (key, mut floor) in entries {
            // (Untrusted: a date in the future would keep the floor for ever.)
            floor.since_ms = floor.since_ms.min(now);
            f.set(&key, floor);
        }
        Ok(f)
    }

    fn set(&mut self, key: &[u8], floor: Dated) {
        self.clock += 1;
        self.remove(key);
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
    /// One request per key at a time (by hash of the key).
    locks: Arc<[tokio::sync::Mutex<()>]>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("keys", &self.len()).finish()
    }
}

impl Session {
    pub(crate) fn new(client: Client) -> Self {
        Session::of(client, Floors::new(SESSION_KEYS_DEFAULT))
    }

    fn of(client: Client, floors: Floors) -> Self {
        let locks: Arc<[tokio::sync::Mutex<()>]> = (0..KEY_LOCKS).map(|_| tokio::sync::Mutex::new(())).collect();
        Session { client, floors: Arc::new(Mutex::new(floors)), locks }
    }

    /// Forget what was learnt of a key `ttl` ago and not seen again since (at least
    /// 1 s; keep it well under the cluster's `tombstone_grace_ms`).
    pub fn with_ttl(self, ttl: Duration) -> Self {
        self.lock().ttl_ms = ttl.as_millis().max(1000) as u64;
        self
    }

    /// Wait for this session's turn on `key`, at most `within`.
    pub(crate) async fn turn(&self, key: &[u8], within: Duration) -> Result<tokio::sync::MutexGuard<'_, ()>, Error> {
        use std::hash::Hasher;
        let mut h = std::hash::DefaultHasher::new();
        h.write(key);
        let lock = self.locks[(h.finish() % KEY_LOCKS as u64) as usize].lock();
        tokio::time::timeout(within, lock).await.map_err(|_| Error::Deadline {
            tried: 0,
            last: "the session's earlier request on this key (or one sharing its lock) did not end in time".into(),
        })
    }

    /// [`Session::turn`] for a request in `session`, if it is in one.
    pub(crate) async fn turn_of<'a>(
        session: Option<&'a Session>,
        key: &[u8],
        within: Duration,
    ) -> Result<Option<tokio::sync::MutexGuard<'a, ()>>, Error> {
        match session {
            Some(s) => s.turn(key, within).await.map(Some),
            None => Ok(None),
        }
    }

    /// Forget what the session knows of `key` (its reads of it then guarantee nothing
    /// until it reads or writes it again). The client does it itself when the cluster
    /// refuses the key's floor (a token from another cluster, or edited), after
    /// answering that request with the refusal.
    pub fn forget(&self, key: &[u8]) {
        self.lock().remove(key);
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
    /// (URL- and cookie-safe: base64url): its newest keys that fit in
    /// [`SESSION_TOKEN_CHARS_MAX`] characters (a few hundred; a cookie holds about 40).
    pub fn token(&self) -> String {
        self.lock().token()
    }

    pub(crate) fn resume(client: Client, token: &str) -> Result<Session, Error> {
        Ok(Session::of(client, Floors::from_token(token)?))
    }

    /// What the session knows of `key`, for a request, and since when.
    pub(crate) fn floor(&self, key: &[u8]) -> Option<(SessionFloor, u64)> {
        self.lock().get_at(key, now_ms()).map(|d| (d.floor, d.since_ms))
    }

    /// A session read answered: the answer is the new floor when it covers the old one
    /// (the node checked it is at least as new; an answer with no value may stand for a
    /// delete whose tombstone was purged, and then the old floor stays).
    pub(crate) fn saw(&self, key: &[u8], context: &Context, found: bool) {
        self.lock().saw(key, context, found);
    }

    /// A session write answered with `floor` (the node's merge of the floor it was
    /// sent with, dated `sent`, and the write). `fresh`: the write's own context
    /// covered that floor, so the floor's history is a live value's now, and its age
    /// starts again.
    pub(crate) fn wrote(&self, key: &[u8], floor: Context, deleted: bool, sent: Option<u64>, fresh: bool) {
        let sent = if fresh { None } else { sent };
        self.lock().wrote_at(key, SessionFloor { context: floor, deleted }, sent, now_ms());
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
        s.wrote_at(b"a", floor(ctx(2), false), None, now_ms());
        s.saw(b"b", &ctx(1), false);
        let mut again = Floors::from_token(&s.token()).unwrap();
        assert_eq!(again.get(b"a").unwrap().context, ctx(2));
        assert!(again.get(b"b").unwrap().deleted);
        for bad in ["", "!!!", &URL_SAFE_NO_PAD.encode([9u8, 1, 2]), &URL_SAFE_NO_PAD.encode([1u8, 0xc1])] {
            let e = Floors::from_token(bad).err().unwrap().to_string();
            assert!(e.contains("invalid session token"), "{e}");
        }
        // A full session's token keeps its newest keys, within the limit.
        let mut big = Floors::new(SESSION_KEYS_DEFAULT);
        for i in 0..SESSION_KEYS_DEFAULT {
            big.wrote_at(format!("key-{i:06}").as_bytes(), floor(ctx(i as u64 + 1), false), None, now_ms());
        }
        let t = big.token();
        assert!(t.len() <= SESSION_TOKEN_CHARS_MAX);
        let mut back = Floors::from_token(&t).unwrap();
        assert!(back.get(format!("key-{:06}", SESSION_KEYS_DEFAULT - 1).as_bytes()).is_some(), "the newest stays");
        assert!(back.get(b"key-000000").is_none(), "the oldest went");
        let long = "A".repeat(SESSION_TOKEN_CHARS_MAX + 1);
        assert!(Floors::from_token(&long).err().unwrap().to_string().contains("longer than"));
    }

    #[test]
    fn floors_only_move_forward_and_the_oldest_key_goes_first() {
        let mut s = Floors::new(2);
        s.wrote_at(b"a", floor(ctx(3), false), None, 1000);
        // An older answer (a purged delete read as nothing) leaves the floor where it was.
        s.saw_at(b"a", &Context::empty(), false, 1000);
        assert_eq!(s.get_at(b"a", 1000).unwrap().floor.context, ctx(3));
        s.saw_at(b"a", &ctx(4), true, 1000);
        assert_eq!(s.get_at(b"a", 1000).unwrap().floor, floor(ctx(4), false));
        s.wrote_at(b"b", floor(ctx(1), false), None, 1000);
        s.wrote_at(b"c", floor(ctx(1), false), None, 1000);
        assert_eq!(s.by_key.len(), 2);
        assert!(s.get_at(b"a", 1000).is_none(), "touched longest ago");
        s.shrink_to(1);
        assert_eq!(s.get_at(b"c", 1000).unwrap().floor, floor(ctx(1), false));
        assert!(s.get_at(b"b", 1000).is_none());
    }

    #[test]
    fn a_token_cannot_date_a_floor_in_the_future() {
        let mut s = Floors::new(8);
        s.set(b"k", Dated { floor: floor(ctx(1), false), since_ms: u64::MAX });
        let mut back = Floors::from_token(&s.token()).unwrap();
        let now = now_ms();
        assert!(back.get_at(b"k", now).unwrap().since_ms <= now);
        assert!(back.get_at(b"k", now + SESSION_FLOOR_TTL_DEFAULT.as_millis() as u64 + 1_000).is_none());
    }

    #[test]
    fn a_floor_is_forgotten_a_ttl_after_its_oldest_knowledge() {
        let mut s = Floors::new(8);
        s.ttl_ms = 10_000;
        s.saw_at(b"k", &ctx(1), true, 1_000);
        // A write keeps the age of the floor it was sent with; a read that covers it
        // starts anew.
        let sent = s.get_at(b"k", 5_000).map(|d| d.since_ms);
        s.wrote_at(b"k", floor(ctx(2), false), sent, 5_000);
        assert_eq!(s.get_at(b"k", 11_000).unwrap().since_ms, 1_000);
        assert!(s.get_at(b"k", 11_001).is_none(), "expired: forgotten");
        assert!(s.by_key.is_empty() && s.by_age.is_empty());
        s.saw_at(b"k", &ctx(2), true, 12_000);
        s.saw_at(b"k", &ctx(3), true, 20_000);
        assert_eq!(s.get_at(b"k", 29_000).unwrap().since_ms, 20_000);
    }
}
