//! Durable state on fjall: keyspaces `data` (key → DVV set), `hints` ((owner, key) →
//! hint held for a home replica that was down) and `meta` (node identity, boot count).
//!
//! Records carry a format version byte before their msgpack body, so later
//! releases can read what older ones wrote.
//!
//! Persist policies, each applied before a write is acknowledged:
//! - `buffer` (default): the journal is flushed to the OS on every write, so an
//!   acked write survives the process being killed (not a power loss).
//! - `sync`: also fdatasync before the ack; concurrent writers share one
//!   fdatasync (group commit) through a dedicated thread.
//! - `periodic`: `buffer`, plus an fdatasync every `persist_period_ms`.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError, bounded};
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use qkv_coordinator::{Hint, HintMeta};
use qkv_proto::{DvvSet, Error, NodeId};
use serde::Deserialize;
use tokio::sync::oneshot;
use tracing::error;

const RECORD_VERSION: u8 = 1;
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

type Waiter = oneshot::Sender<Result<(), String>>;

/// The node's storage.
pub struct Storage {
    db: Database,
    data: Keyspace,
    hints: Keyspace,
    boot: u64,
    syncer: Option<Sender<Waiter>>,
    stop: Option<Sender<Waiter>>,
    thread: Option<JoinHandle<()>>,
}

fn storage_err(e: impl std::fmt::Display) -> Error {
    Error::Storage(e.to_string())
}

/// A record: format version byte, then msgpack.
fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    let mut out = vec![RECORD_VERSION];
    // DVV sets and hints are integers and byte strings: they always serialise.
    rmp_serde::encode::write_named(&mut out, value).expect("record serialises");
    out
}

/// Decode a record written by [`encode`]; `valid` checks what a corrupt disk could break.
fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str, valid: impl Fn(&T) -> bool) -> Result<T, Error> {
    match bytes.split_first() {
        Some((&RECORD_VERSION, rest)) => {
            let v: T = rmp_serde::from_slice(rest).map_err(|e| Error::Storage(format!("corrupt {what}: {e}")))?;
            if !valid(&v) {
                return Err(Error::Storage(format!("corrupt {what}: invalid version vector set")));
            }
            Ok(v)
        }
        _ => Err(Error::Storage(format!("corrupt {what}: unknown format version"))),
    }
}

fn decode_set(bytes: &[u8]) -> Result<DvvSet, Error> {
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
        let data = db.keyspace("data", KeyspaceCreateOptions::default)?;
        let hints = db.keyspace("hints", KeyspaceCreateOptions::default)?;
        let meta = db.keyspace("meta", KeyspaceCreateOptions::default)?;
        match meta.get("node_id")? {
            Some(v) if v.as_ref() != id.to_be_bytes() => {
                let owner = <[u8; 4]>::try_from(v.as_ref()).map(u32::from_be_bytes).unwrap_or(0);
                anyhow::bail!("data dir {} belongs to node {owner}, not node {id}", dir.display());
            }
            Some(_) => {}
            None => meta.insert("node_id", id.to_be_bytes())?,
        }
        // The boot count is this run's incarnation: its heartbeats must beat the last run's.
        let boot = match meta.get("boot")? {
            Some(v) => <[u8; 8]>::try_from(v.as_ref()).map(u64::from_be_bytes).unwrap_or(0) + 1,
            None => 1,
        };
        meta.insert("boot", boot.to_be_bytes())?;
        db.persist(PersistMode::SyncAll)?;
        let mut s = Storage { db, data, hints, boot, syncer: None, stop: None, thread: None };
        match policy {
            Persist::Buffer => {}
            Persist::Sync => {
                let (tx, rx) = bounded::<Waiter>(SYNC_WAITERS_MAX);
                let db = s.db.clone();
                s.thread = Some(
                    std::thread::Builder::new().name("qkv-group-commit".into()).spawn(move || group_commit(db, rx))?,
                );
                s.syncer = Some(tx);
            }
            Persist::Periodic => {
                let (tx, rx) = bounded::<Waiter>(1);
                let db = s.db.clone();
                let period = Duration::from_millis(period_ms);
                s.thread = Some(
                    std::thread::Builder::new()
                        .name("qkv-periodic-sync".into())
                        .spawn(move || periodic(db, rx, period))?,
                );
                s.stop = Some(tx);
            }
        }
        Ok(s)
    }

    /// The stored state of `key`.
    pub fn get(&self, key: &[u8]) -> Result<Option<DvvSet>, Error> {
        self.data.get(key).map_err(storage_err)?.map(|v| decode_set(&v)).transpose()
    }

    /// This run's boot count (1 on a fresh data dir).
    pub fn boot(&self) -> u64 {
        self.boot
    }

    /// Store the state of `key`. It is in the journal, flushed to the OS, when this
    /// returns; call [`Storage::durable`] before acknowledging to honour the policy.
    pub fn put(&self, key: &[u8], set: &DvvSet) -> Result<(), Error> {
        self.data.insert(key, encode(set)).map_err(storage_err)
    }

    /// True when writes need [`Storage::durable`] before their ack (the `sync` policy).
    pub fn needs_sync(&self) -> bool {
        self.syncer.is_some()
    }

    /// Wait until everything written so far is durable under the policy.
    pub async fn durable(&self) -> Result<(), Error> {
        let Some(tx) = &self.syncer else {
            return Ok(());
        };
        let (wtx, wrx) = oneshot::channel();
        match tx.try_send(wtx) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                return Err(Error::Storage("too many writes waiting for fdatasync".into()));
            }
            Err(TrySendError::Disconnected(_)) => return Err(Error::ShuttingDown),
        }
        match wrx.await {
            Ok(r) => r.map_err(Error::Storage),
            Err(_) => Err(Error::ShuttingDown),
        }
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
    fn drop(&mut self) {
        self.syncer = None;
        self.stop = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn hint_key(owner: NodeId, key: &[u8]) -> Vec<u8> {
    let mut k = owner.to_be_bytes().to_vec();
    k.extend_from_slice(key);
    k
}

/// The core's handle on the storage; the driver keeps another for flushes.
pub struct StoreHandle(pub Arc<Storage>);

impl qkv_coordinator::Store for StoreHandle {
    fn get(&self, key: &[u8]) -> Result<Option<DvvSet>, Error> {
        self.0.get(key)
    }
    fn put(&mut self, key: &[u8], set: &DvvSet) -> Result<(), Error> {
        self.0.put(key, set)
    }
    fn get_hint(&self, owner: NodeId, key: &[u8]) -> Result<Option<Hint>, Error> {
        self.0.hints.get(hint_key(owner, key)).map_err(storage_err)?.map(|v| decode_hint(&v)).transpose()
    }
    fn put_hint(&mut self, owner: NodeId, key: &[u8], hint: &Hint) -> Result<(), Error> {
        self.0.hints.insert(hint_key(owner, key), encode(hint)).map_err(storage_err)
    }
    fn delete_hint(&mut self, owner: NodeId, key: &[u8]) -> Result<(), Error> {
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
            let bytes = qkv_coordinator::hints::hint_bytes(key, h.set.value_bytes());
            out.push(HintMeta {
                owner: u32::from_be_bytes(*owner),
                key: key.to_vec(),
                bytes,
                created_ms: h.created_ms,
            });
        }
        Ok(out)
    }
}

/// Group commit: take every waiter queued so far, fdatasync once, answer them all.
fn group_commit(db: Database, rx: Receiver<Waiter>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        batch.extend(rx.try_iter());
        let r = db.persist(PersistMode::SyncData).map_err(|e| e.to_string());
        if let Err(e) = &r {
            error!("fdatasync failed: {e}");
        }
        for w in batch {
            let _ = w.send(r.clone());
        }
    }
}

fn periodic(db: Database, stop: Receiver<Waiter>, period: Duration) {
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
        use qkv_coordinator::Store;
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Arc::new(Storage::open(dir.path(), 1, Persist::Buffer, 10).unwrap());
            assert_eq!(s.boot(), 1);
            let mut h = StoreHandle(s);
            h.put_hint(3, b"k", &Hint { set: set(b"v"), created_ms: 42 }).unwrap();
            h.put_hint(4, b"k", &Hint { set: set(b"w"), created_ms: 43 }).unwrap();
            h.delete_hint(4, b"k").unwrap();
        }
        let s = Arc::new(Storage::open(dir.path(), 1, Persist::Buffer, 10).unwrap());
        assert_eq!(s.boot(), 2);
        let h = StoreHandle(s);
        let metas = h.scan_hints().unwrap();
        assert_eq!(metas.len(), 1);
        assert_eq!((metas[0].owner, metas[0].key.as_slice(), metas[0].created_ms), (3, b"k".as_slice(), 42));
        assert_eq!(h.get_hint(3, b"k").unwrap().unwrap().set, set(b"v"));
        assert!(h.get_hint(4, b"k").unwrap().is_none());
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
