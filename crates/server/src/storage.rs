//! Durable state on fjall: keyspaces `data` ((token, key) → DVV set), `hints`
//! ((owner, key) → hint held for a home replica that was down) and `meta` (node
//! identity, disk epoch, boot count, the actor's counter lease, format).
//!
//! `data` keys start with the key's ring token (8 bytes, big-endian), so the keys
//! of one arc of the ring, and of one anti-entropy leaf, are one range scan.
//!
//! Records carry a format version byte before their msgpack body, so later
//! releases can read what older ones wrote (version 1: fields by name; 2: by position).
//!
//! Writes go to fjall's journal buffer; the core thread flushes it to the OS once per
//! round, before any write of the round is acknowledged ([`Storage::flush_journal`]).
//! Persist policies, each applied before a write is acknowledged:
//! - `buffer` (default): the journal is flushed to the OS, so an acked write survives
//!   the process being killed (not a power loss).
//! - `sync`: also fdatasync; every write waiting for one shares the next (group
//!   commit) on a dedicated thread. (fjall holds its journal's lock through the
//!   fdatasync: a write of the core waits for a sync that is running.)
//! - `periodic`: `buffer`, plus an fdatasync every `persist_period_ms`.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError, bounded};
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use qkv_core::ring::token;
use qkv_core::{Hint, HintMeta};
use qkv_proto::{DvvSet, Error, NodeId};
use serde::Deserialize;
use tokio::sync::oneshot;
use tracing::error;

/// Records written now: msgpack with struct fields by position (compact).
const RECORD_VERSION: u8 = 2;
/// Records of earlier releases: msgpack with field names. Still read.
const RECORD_VERSION_NAMED: u8 = 1;
/// Layout of the data directory; 2 = token-prefixed `data` keys. Earlier layouts
/// are migrated at open ([`crate::migrate`]).
pub(crate) const FORMAT: u64 = 2;
/// Most writers waiting for one group commit.
pub const SYNC_WAITERS_MAX: usize = 16_384;

/// When a write is made durable. See the module docs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Persist {
    /// Flushed to the OS before the ack.
    #[default]
    Buffer,
    /// fdatasync before the ack, grouped across concurrent writes.
    Sync,
    /// Flushed to the OS before the ack; fdatasync every period.
    Periodic,
}

/// What a group commit calls when its fdatasync is done.
pub type SyncDone = Box<dyn FnOnce(Result<(), Error>) + Send>;

/// A batch waiting for a sync, with the store's sequence number after its writes.
type Waiter = (u64, SyncDone);

/// The node's storage.
pub struct Storage {
    db: Database,
    data: Keyspace,
    hints: Keyspace,
    /// Purged tombstones: key → what they had seen (`Seen`), so late old states are dropped.
    purged: Keyspace,
    meta: Keyspace,
    boot: u64,
    epoch: u32,
    fresh: bool,
    /// Written since the last flush of the journal (see [`Storage::flush_journal`]).
    dirty: std::sync::atomic::AtomicBool,
    policy: Persist,
    /// The group-commit thread's queue (every policy: the core's lease and vote syncs
    /// need an fdatasync under any).
    syncer: Option<Sender<Waiter>>,
    /// Stops the periodic sync.
    stop: Option<Sender<()>>,
    threads: Vec<JoinHandle<()>>,
}

fn storage_err(e: impl std::fmt::Display) -> Error {
    Error::Storage(e.to_string())
}

/// A record: format version byte, then compact msgpack (fields by position; a field
/// added later goes last, with a serde default).
fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    let mut out = vec![RECORD_VERSION];
    // DVV sets and hints are integers and byte strings: they always serialise.
    rmp_serde::encode::write(&mut out, value).expect("record serialises");
    out
}

/// Decode a record written by [`encode`]; `valid` checks what a corrupt disk could break.
fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str, valid: impl Fn(&T) -> bool) -> Result<T, Error> {
    match bytes.split_first() {
        // The decoder takes structs by position or by name alike.
        Some((&(RECORD_VERSION | RECORD_VERSION_NAMED), rest)) => {
            let v: T = rmp_serde::from_slice(rest).map_err(|e| Error::Storage(format!("corrupt {what}: {e}")))?;
            if !valid(&v) {
                return Err(Error::Storage(format!("corrupt {what}: invalid version vector set")));
            }
            Ok(v)
        }
        _ => Err(Error::Storage(format!("corrupt {what}: unknown format version"))),
    }
}

pub(crate) fn decode_set(bytes: &[u8]) -> Result<DvvSet, Error> {
    decode(bytes, "record", DvvSet::is_valid)
}

fn decode_hint(bytes: &[u8]) -> Result<Hint, Error> {
    decode(bytes, "hint", |h: &Hint| h.set.is_valid())
}

impl Storage {
    /// Open (or create) the store in `dir` for node `id` with `policy`.
    ///
    /// Refuses a data directory that belongs to another node id.
    pub fn open(dir: &std::path::Path, id: NodeId, policy: Persist, period_ms: u64) -> anyhow::Result<Storage> {
        std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("cannot create data dir {}: {e}", dir.display()))?;
        let db = Database::builder(dir)
            .worker_threads(1)
            .open()
            .map_err(|e| anyhow::anyhow!("cannot open data dir {}: {e}", dir.display()))?;
        // Writes stay in the journal's buffer until `flush_journal`, once for all the
        // writes the core made in a round, before any of them is acknowledged (not once
        // per write). fjall stores the setting with a keyspace when it creates it: the
        // keyspaces of a data dir created by an earlier release flush on every write.
        let manual = || KeyspaceCreateOptions::default().manual_journal_persist(true);
        let data = db.keyspace("data", manual)?;
        let hints = db.keyspace("hints", manual)?;
        let purged = db.keyspace("purged", manual)?;
        let meta = db.keyspace("meta", manual)?;
        let fresh = meta.get("node_id")?.is_none();
        match meta.get("node_id")? {
            Some(v) if v.as_ref() != id.to_be_bytes() => {
                let owner = <[u8; 4]>::try_from(v.as_ref()).map(u32::from_be_bytes).unwrap_or(0);
                anyhow::bail!("data dir {} belongs to node {owner}, not node {id}", dir.display());
            }
            Some(_) => {}
            None => {
                meta.insert("node_id", id.to_be_bytes())?;
                meta.insert("format", FORMAT.to_be_bytes())?;
            }
        }
        crate::migrate::migrate(&db, &data, &meta, dir)?;
        // A new disk (never written, or wiped) takes a new epoch: its actor never reuses the
        // counters an earlier disk of this node handed out. So does a `buffer` or `periodic`
        // disk after an unclean shutdown: it may have lost writes it had acked and sent to
        // other replicas, and under its old actor its next write of such a key would claim
        // them (a version vector entry covers every lower counter), deleting them there.
        let clean = meta.get("clean")?.is_some();
        meta.remove("clean")?;
        let epoch = match meta_u64(&meta, "epoch")? {
            Some(e) if clean || policy == Persist::Sync => e as u32,
            old => {
                let e = random_epoch();
                if old.is_some() {
                    tracing::warn!(
                        "the last run did not shut down cleanly and persist is {policy:?}: writes it acked may be \
                         lost here, so this disk takes a new epoch ({e:08x})"
                    );
                }
                meta.insert("epoch", u64::from(e).to_be_bytes())?;
                e
            }
        };
        // This run's incarnation: its heartbeats must beat every earlier run's, including
        // runs on a disk since wiped, hence the wall clock as a floor.
        let wall_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
        let boot = (meta_u64(&meta, "boot")?.unwrap_or(0) + 1).max(wall_ms as u64);
        meta.insert("boot", boot.to_be_bytes())?;
        db.persist(PersistMode::SyncAll)?;
        let mut s = Storage {
            db,
            data,
            hints,
            purged,
            meta,
            boot,
            epoch,
            fresh,
            dirty: Default::default(),
            policy,
            syncer: None,
            stop: None,
            threads: vec![],
        };
        let (tx, rx) = bounded::<Waiter>(SYNC_WAITERS_MAX);
        let db = s.db.clone();
        s.threads
            .push(std::thread::Builder::new().name("qkv-group-commit".into()).spawn(move || group_commit(db, rx))?);
        s.syncer = Some(tx);
        if policy == Persist::Periodic {
            let (tx, rx) = bounded::<()>(1);
            let db = s.db.clone();
            let period = Duration::from_millis(period_ms);
            s.threads.push(
                std::thread::Builder::new().name("qkv-periodic-sync".into()).spawn(move || periodic(db, rx, period))?,
            );
            s.stop = Some(tx);
        }
        Ok(s)
    }

    /// The stored state of `key`.
    pub fn get(&self, key: &[u8]) -> Result<Option<DvvSet>, Error> {
        self.data.get(data_key(key)).map_err(storage_err)?.map(|v| decode_set(&v)).transpose()
    }

    /// This run's incarnation: above every earlier run's.
    pub fn boot(&self) -> u64 {
        self.boot
    }

    /// The disk's epoch (see `qkv_proto::Actor`).
    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    /// True when this run created the data dir (a new or wiped disk).
    pub fn fresh(&self) -> bool {
        self.fresh
    }

    /// Store the state of `key`. It is in the journal's buffer when this returns; call
    /// [`Storage::flush_journal`] (and, under `sync`, [`Storage::durable`]) before
    /// acknowledging it.
    pub fn put(&self, key: &[u8], set: &DvvSet) -> Result<(), Error> {
        self.wrote();
        self.data.insert(data_key(key), encode(set)).map_err(storage_err)
    }

    /// True when every write needs an fdatasync before its ack (the `sync` policy).
    pub fn needs_sync(&self) -> bool {
        self.policy == Persist::Sync
    }

    /// Hand every write so far to the OS (one `write` of the journal's buffer): it then
    /// survives the process being killed. What `buffer` acknowledges after.
    pub fn flush_journal(&self) -> Result<(), Error> {
        // Cleared before the write, so a write made meanwhile sets it again; set back if
        // the flush failed (fjall is then poisoned, and every later flush says so).
        self.dirty.store(false, std::sync::atomic::Ordering::Relaxed);
        let r = self.db.persist(PersistMode::Buffer).map_err(storage_err);
        if r.is_err() {
            self.wrote();
        }
        r
    }

    /// Flush the journal if anything was written since its last flush: the core
    /// thread does it at the end of every round, so no write stays only in this
    /// process's memory past the round that made it (replies that wait for no flush
    /// included).
    pub fn flush_if_written(&self) -> Result<(), Error> {
        if self.dirty.load(std::sync::atomic::Ordering::Relaxed) { self.flush_journal() } else { Ok(()) }
    }

    fn wrote(&self) {
        self.dirty.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Make everything written so far durable against power loss (fdatasync), then call
    /// `done` from the group-commit thread. Writes queued while a sync runs share the
    /// next one. A full queue is an error, and `done` is not called.
    pub fn sync_later(&self, done: SyncDone) -> Result<(), Error> {
        let Some(tx) = &self.syncer else {
            return Err(Error::ShuttingDown);
        };
        match tx.try_send((self.db.seqno(), done)) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => {
                Err(Error::Storage(format!("{SYNC_WAITERS_MAX} batches of writes are waiting for fdatasync")))
            }
            Err(TrySendError::Disconnected(_)) => Err(Error::ShuttingDown),
        }
    }

    /// Wait until everything written so far is durable against power loss.
    pub async fn durable(&self) -> Result<(), Error> {
        let (tx, rx) = oneshot::channel();
        self.sync_later(Box::new(move |r| {
            let _ = tx.send(r);
        }))?;
        rx.await.unwrap_or(Err(Error::ShuttingDown))
    }

    /// Bytes on disk.
    pub fn disk_bytes(&self) -> u64 {
        self.db.disk_space().unwrap_or(0)
    }

    /// fsync everything (on clean shutdown).
    pub fn flush(&self) -> Result<(), Error> {
        self.db.persist(PersistMode::SyncAll).map_err(storage_err)
    }
}

impl Drop for Storage {
    /// A clean shutdown: everything is synced, and the next start keeps the epoch.
    fn drop(&mut self) {
        self.syncer = None;
        self.stop = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        let marked = self.meta.insert("clean", [1u8]).and_then(|()| self.db.persist(PersistMode::SyncAll));
        if let Err(e) = marked {
            tracing::warn!("marking a clean shutdown: {e}");
        }
    }
}

pub(crate) fn meta_u64(meta: &Keyspace, name: &str) -> anyhow::Result<Option<u64>> {
    match meta.get(name)? {
        None => Ok(None),
        Some(v) => match <[u8; 8]>::try_from(v.as_ref()) {
            Ok(b) => Ok(Some(u64::from_be_bytes(b))),
            Err(_) => anyhow::bail!("corrupt meta record {name:?}"),
        },
    }
}

/// A random epoch from the OS-seeded keys of std's `RandomState` (never 0).
fn random_epoch() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    (h.finish() as u32).max(1)
}

/// A `data` key: the ring token, then the key.
pub(crate) fn data_key(key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + key.len());
    k.extend_from_slice(&token(key).to_be_bytes());
    k.extend_from_slice(key);
    k
}

fn hint_key(owner: NodeId, key: &[u8]) -> Vec<u8> {
    let mut k = owner.to_be_bytes().to_vec();
    k.extend_from_slice(key);
    k
}

/// The core's handle on the storage; the driver keeps another for flushes.
pub struct StoreHandle(pub Arc<Storage>);

impl qkv_core::Store for StoreHandle {
    fn get(&self, key: &[u8]) -> Result<Option<DvvSet>, Error> {
        self.0.get(key)
    }
    fn put(&mut self, key: &[u8], set: &DvvSet) -> Result<(), Error> {
        self.0.put(key, set)
    }
    fn delete(&mut self, key: &[u8]) -> Result<(), Error> {
        self.0.wrote();
        self.0.data.remove(data_key(key)).map_err(storage_err)
    }
    fn scan(&self, from: (u64, &[u8]), to: u64, limit: usize) -> Result<Vec<(Vec<u8>, DvvSet)>, Error> {
        let mut start = from.0.to_be_bytes().to_vec();
        start.extend_from_slice(from.1);
        let mut out = vec![];
        for kv in self.0.data.range(start..) {
            if out.len() >= limit {
                break;
            }
            let (k, v) = kv.into_inner().map_err(storage_err)?;
            let Some((t, key)) = k.split_first_chunk::<8>() else {
                return Err(Error::Storage("corrupt data key".into()));
            };
            if u64::from_be_bytes(*t) > to {
                break;
            }
            out.push((key.to_vec(), decode_set(&v)?));
        }
        Ok(out)
    }
    fn counter_lease(&self) -> Result<u64, Error> {
        meta_u64(&self.0.meta, "counter").map(|c| c.unwrap_or(0)).map_err(storage_err)
    }
    fn put_counter_lease(&mut self, lease: u64) -> Result<(), Error> {
        self.0.wrote();
        self.0.meta.insert("counter", lease.to_be_bytes()).map_err(storage_err)
    }
    fn get_meta(&self, name: &str) -> Result<Option<Vec<u8>>, Error> {
        let got = self.0.meta.get(format!("membership.{name}")).map_err(storage_err)?;
        Ok(got.map(|v| v.to_vec()))
    }
    fn put_meta(&mut self, name: &str, value: &[u8]) -> Result<(), Error> {
        self.0.wrote();
        self.0.meta.insert(format!("membership.{name}"), value).map_err(storage_err)
    }
    fn get_hint(&self, owner: NodeId, key: &[u8]) -> Result<Option<Hint>, Error> {
        self.0.hints.get(hint_key(owner, key)).map_err(storage_err)?.map(|v| decode_hint(&v)).transpose()
    }
    fn put_hint(&mut self, owner: NodeId, key: &[u8], hint: &Hint) -> Result<(), Error> {
        self.0.wrote();
        self.0.hints.insert(hint_key(owner, key), encode(hint)).map_err(storage_err)
    }
    fn delete_hint(&mut self, owner: NodeId, key: &[u8]) -> Result<(), Error> {
        self.0.wrote();
        self.0.hints.remove(hint_key(owner, key)).map_err(storage_err)
    }
    fn scan_hints(&self) -> Result<Vec<HintMeta>, Error> {
        let mut out = vec![];
        for kv in self.0.hints.iter() {
            let (k, v) = kv.into_inner().map_err(storage_err)?;
            let Some((owner, key)) = k.split_first_chunk::<4>() else {
                return Err(Error::Storage("corrupt hint key".into()));
            };
            let h = decode_hint(&v)?;
            let bytes = qkv_core::hints::hint_bytes(key, h.set.value_bytes());
            out.push(HintMeta {
                owner: u32::from_be_bytes(*owner),
                key: key.to_vec(),
                bytes,
                created_ms: h.created_ms,
            });
        }
        Ok(out)
    }
    fn put_purged(&mut self, key: &[u8], seen: &qkv_proto::Seen) -> Result<(), Error> {
        self.0.wrote();
        self.0.purged.insert(key, encode(seen)).map_err(storage_err)
    }
    fn delete_purged(&mut self, key: &[u8]) -> Result<(), Error> {
        self.0.wrote();
        self.0.purged.remove(key).map_err(storage_err)
    }
    fn scan_purged(&self) -> Result<Vec<(Vec<u8>, qkv_proto::Seen)>, Error> {
        let mut out = vec![];
        for kv in self.0.purged.iter() {
            let (k, v) = kv.into_inner().map_err(storage_err)?;
            out.push((k.to_vec(), decode(&v, "purge record", |s: &qkv_proto::Seen| s.is_normal())?));
        }
        Ok(out)
    }
}

/// Group commit: take every waiter queued so far, fdatasync once, answer them all.
fn group_commit(db: Database, rx: Receiver<Waiter>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        batch.extend(rx.try_iter());
        // Everything written up to here is in this sync; so is every waiter's write.
        let covered = db.seqno();
        let r = db.persist(PersistMode::SyncData).map_err(storage_err);
        if let Err(e) = &r {
            error!("fdatasync failed: {e}");
        }
        for (written, done) in batch {
            assert!(written <= covered, "a sync acks a write after it ({written} > {covered})");
            done(r.clone());
        }
    }
}

fn periodic(db: Database, stop: Receiver<()>, period: Duration) {
    loop {
        match stop.recv_timeout(period) {
            Err(RecvTimeoutError::Timeout) => {
                if let Err(e) = db.persist(PersistMode::SyncData) {
                    error!("periodic fdatasync failed: {e}");
                }
            }
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qkv_proto::VersionVector;

    fn set(v: &[u8]) -> DvvSet {
        let mut s = DvvSet::new();
        s.update(&VersionVector::new(), Some(v.to_vec()), 1);
        s
    }

    #[tokio::test]
    async fn round_trip_across_reopen_for_each_policy() {
        for policy in [Persist::Buffer, Persist::Sync, Persist::Periodic] {
            let dir = tempfile::tempdir().unwrap();
            {
                let s = Storage::open(dir.path(), 1, policy, 10).unwrap();
                s.put(b"k", &set(b"v")).unwrap();
                s.durable().await.unwrap();
            }
            let s = Storage::open(dir.path(), 1, policy, 10).unwrap();
            assert_eq!(s.get(b"k").unwrap(), Some(set(b"v")));
            assert_eq!(s.get(b"missing").unwrap(), None);
        }
    }

    #[test]
    fn hints_survive_a_reopen_and_the_boot_count_grows() {
        use qkv_core::Store;
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Arc::new(Storage::open(dir.path(), 1, Persist::Buffer, 10).unwrap());
            let mut h = StoreHandle(s);
            h.put_hint(3, b"k", &Hint { set: set(b"v"), created_ms: 42 }).unwrap();
            h.put_hint(4, b"k", &Hint { set: set(b"w"), created_ms: 43 }).unwrap();
            h.delete_hint(4, b"k").unwrap();
        }
        let s = Arc::new(Storage::open(dir.path(), 1, Persist::Buffer, 10).unwrap());
        let h = StoreHandle(s);
        let metas = h.scan_hints().unwrap();
        assert_eq!(metas.len(), 1);
        assert_eq!((metas[0].owner, metas[0].key.as_slice(), metas[0].created_ms), (3, b"k".as_slice(), 42));
        assert_eq!(h.get_hint(3, b"k").unwrap().unwrap().set, set(b"v"));
        assert!(h.get_hint(4, b"k").unwrap().is_none());
    }

    #[test]
    fn boots_grow_and_a_new_disk_takes_a_new_epoch() {
        let dir = tempfile::tempdir().unwrap();
        let (boot, epoch) = {
            let s = Storage::open(dir.path(), 1, Persist::Buffer, 10).unwrap();
            assert!(s.fresh());
            (s.boot(), s.epoch())
        };
        let s = Storage::open(dir.path(), 1, Persist::Buffer, 10).unwrap();
        assert!(!s.fresh());
        assert!(s.boot() > boot);
        assert_eq!(s.epoch(), epoch, "a restart keeps the epoch");
        drop(s);
        let wiped = tempfile::tempdir().unwrap();
        let s = Storage::open(wiped.path(), 1, Persist::Buffer, 10).unwrap();
        assert!(s.fresh() && s.boot() > boot, "a wiped disk still beats the old incarnation");
        assert_ne!(s.epoch(), epoch, "a wiped disk takes a new epoch");
    }

    /// Issue 10 (found by the simulator with `--buffer`): a `buffer` disk that may have
    /// lost acked writes in a power loss must not claim them under its old actor.
    #[test]
    fn an_unclean_shutdown_of_a_buffer_disk_takes_a_new_epoch() {
        let dir = tempfile::tempdir().unwrap();
        let unclean = |dir: &std::path::Path| {
            // What a killed process leaves: no clean-shutdown mark.
            let db = Database::builder(dir).worker_threads(1).open().unwrap();
            db.keyspace("meta", KeyspaceCreateOptions::default).unwrap().remove("clean").unwrap();
            db.persist(PersistMode::SyncAll).unwrap();
        };
        let epoch = Storage::open(dir.path(), 1, Persist::Buffer, 10).unwrap().epoch();
        assert_eq!(Storage::open(dir.path(), 1, Persist::Buffer, 10).unwrap().epoch(), epoch, "clean: kept");
        unclean(dir.path());
        let e2 = Storage::open(dir.path(), 1, Persist::Buffer, 10).unwrap().epoch();
        assert_ne!(e2, epoch, "unclean buffer: a new epoch");
        unclean(dir.path());
        assert_eq!(
            Storage::open(dir.path(), 1, Persist::Sync, 10).unwrap().epoch(),
            e2,
            "sync acks only what is durable"
        );
    }

    #[test]
    fn scans_follow_token_order_and_stop_at_the_bound() {
        use qkv_core::Store;
        let dir = tempfile::tempdir().unwrap();
        let mut h = StoreHandle(Arc::new(Storage::open(dir.path(), 1, Persist::Buffer, 10).unwrap()));
        let keys: Vec<Vec<u8>> = (0..50).map(|i| format!("k{i}").into_bytes()).collect();
        for k in &keys {
            h.put(k, &set(k)).unwrap();
        }
        let all = h.scan((0, &[]), u64::MAX, 1000).unwrap();
        assert_eq!(all.len(), 50);
        assert!(all.windows(2).all(|w| token(&w[0].0) <= token(&w[1].0)));
        let mid = token(&all[25].0);
        let low = h.scan((0, &[]), mid, 1000).unwrap();
        assert_eq!(low.len(), 26);
        let page = h.scan((token(&all[10].0), &all[10].0), u64::MAX, 5).unwrap();
        assert_eq!(
            page.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>(),
            all[10..15].iter().map(|(k, _)| k.clone()).collect::<Vec<_>>()
        );
        h.delete(&keys[3]).unwrap();
        assert!(h.get(&keys[3]).unwrap().is_none());
        assert_eq!(h.counter_lease().unwrap(), 0);
        h.put_counter_lease(77).unwrap();
        assert_eq!(h.counter_lease().unwrap(), 77);
    }

    #[test]
    fn a_data_dir_belongs_to_one_node() {
        let dir = tempfile::tempdir().unwrap();
        drop(Storage::open(dir.path(), 1, Persist::Buffer, 10).unwrap());
        let err = Storage::open(dir.path(), 2, Persist::Buffer, 10).err().unwrap().to_string();
        assert!(err.contains("belongs to node 1"), "{err}");
    }

    #[test]
    fn corrupt_records_are_errors_not_panics() {
        assert!(decode_set(&[]).is_err());
        assert!(decode_set(&[9, 1]).is_err());
        assert!(decode_set(&[RECORD_VERSION, 0xc1]).is_err());
        assert!(decode_hint(&encode(&set(b"x"))).is_err(), "a set is not a hint");
        assert_eq!(decode_set(&encode(&set(b"x"))).unwrap(), set(b"x"));
    }
}
