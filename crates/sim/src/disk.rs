//! A simulated disk implementing the core's `Store`: writes are volatile until a
//! flush completes; a crash loses whatever was not flushed.

use qkv_core::mem::MemStore;
use qkv_core::{Hint, HintMeta, Store};

use std::collections::BTreeMap;

use qkv_proto::{DvvSet, Error, NodeId};

/// What a node's store holds.
pub type Contents = MemStore;

/// One node's disk: what the process sees, and what survives a crash.
#[derive(Clone, Debug, Default)]
pub struct Disk {
    current: Contents,
    durable: Contents,
    /// The simulator's record (not the node's): per key, when this node purged a
    /// tombstone and its clock, so the checker knows what it covered.
    pub purged: BTreeMap<Vec<u8>, Vec<(u64, qkv_proto::Seen)>>,
    /// Virtual time, set by the simulator before it runs the node.
    pub now: u64,
    /// Probability that a store operation fails (an injected I/O error; nothing changes).
    pub error_rate: f64,
    /// The injected errors' random state (xorshift64), seeded by the simulator.
    pub error_rng: u64,
    /// Errors injected so far.
    pub errors: u64,
    /// Syncs in flight, by the core's flush token: what the disk held when each was
    /// asked for, all it may make durable.
    syncs: BTreeMap<u64, (u64, Contents)>,
    /// Syncs asked for so far, and the latest (by that count) that completed.
    syncs_asked: u64,
    synced: u64,
}

impl Disk {
    /// Draw whether the next store operation fails.
    fn inject(&mut self) -> Result<(), Error> {
        if self.error_rate <= 0.0 {
            return Ok(());
        }
        let mut x = self.error_rng.max(1);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.error_rng = x;
        if (x >> 11) as f64 / (1u64 << 53) as f64 >= self.error_rate {
            return Ok(());
        }
        self.errors += 1;
        Err(Error::Storage("injected I/O error".into()))
    }

    /// What survives a crash now.
    pub fn durable(&self) -> &Contents {
        &self.durable
    }

    /// What the process sees now.
    pub fn current(&self) -> &Contents {
        &self.current
    }

    /// Everything of `key` that survives a crash covers: its state's, its hints' and
    /// its purged tombstones' clocks and dots, joined. `running`: the node goes on
    /// (and will flush), so a hint it deleted but did not flush yet keeps nothing;
    /// otherwise (every node loses power) that hint comes back.
    pub fn durable_seen(&self, key: &[u8], running: bool) -> qkv_proto::Seen {
        let c = &self.durable;
        let mut seen = qkv_proto::Seen::new();
        let mut add = |s: qkv_proto::Seen| {
            seen.vv.join(&s.vv);
            seen.dots.extend(s.dots);
        };
        if let Some(s) = c.value(key) {
            add(s.seen());
        }
        for (id, h) in &c.hints {
            // A hint deleted but not yet flushed is on its way out: the next flush
            // takes it, so it keeps nothing (found by the simulator: two stand-ins
            // dropping the same expired hint each counted on the other's copy).
            if id.1 == key && (!running || self.current.hints.contains_key(id)) {
                add(h.set.seen());
            }
        }
        for (_, seen) in self.purged.get(key).into_iter().flatten() {
            add(seen.clone());
        }
        seen.normalize();
        seen
    }

    /// Everything written so far is durable now (opening the store syncs it).
    pub fn sync(&mut self) {
        self.durable = self.current.clone();
        self.synced = self.syncs_asked;
    }

    /// The core asked for an fdatasync (`token`): it covers what is written now, and
    /// nothing written after, however late it completes.
    pub fn begin_sync(&mut self, token: u64) {
        self.syncs_asked += 1;
        let prev = self.syncs.insert(token, (self.syncs_asked, self.current.clone()));
        assert!(prev.is_none(), "flush token {token} asked for twice");
    }

    /// That fdatasync completed (`ok`) or failed: a later one that completed first
    /// already covers it.
    pub fn end_sync(&mut self, token: u64, ok: bool) {
        let Some((n, contents)) = self.syncs.remove(&token) else { return };
        if ok && n > self.synced {
            self.durable = contents;
            self.synced = n;
        }
    }

    /// The process is gone: its syncs in flight never complete.
    pub fn drop_syncs(&mut self) {
        self.syncs.clear();
    }

    /// The process crashed: unflushed writes are gone.
    pub fn crash(&mut self) {
        self.current = self.durable.clone();
        self.syncs.clear();
    }

    /// Lose everything, flushed or not (a wiped or replaced disk).
    pub fn wipe(&mut self) {
        self.current = Contents::default();
        self.durable = Contents::default();
        self.syncs.clear();
    }
}

/// Stores that can be shared between the simulator's bookkeeping and a core.
pub struct SharedDisk(pub std::rc::Rc<std::cell::RefCell<Disk>>);

impl Store for SharedDisk {
    fn get(&self, key: &[u8]) -> Result<Option<DvvSet>, Error> {
        self.0.borrow_mut().inject()?;
        self.0.borrow().current.get(key)
    }
    fn put(&mut self, key: &[u8], set: &DvvSet) -> Result<(), Error> {
        self.0.borrow_mut().inject()?;
        self.0.borrow_mut().current.put(key, set)
    }
    fn delete(&mut self, key: &[u8]) -> Result<(), Error> {
        let mut d = self.0.borrow_mut();
        d.inject()?;
        // A purge deletes a tombstone; a node also deletes live copies of ranges it no
        // longer holds (or gains again), which are no purge.
        if let Some(old) = d.current.value(key).filter(|s| s.is_deleted()).cloned() {
            let now = d.now;
            d.purged.entry(key.to_vec()).or_default().push((now, old.seen()));
        }
        d.current.delete(key)
    }
    fn scan(&self, from: (u64, &[u8]), to: u64, limit: usize) -> Result<Vec<(Vec<u8>, DvvSet)>, Error> {
        self.0.borrow().current.scan(from, to, limit)
    }
    fn counter_lease(&self) -> Result<u64, Error> {
        self.0.borrow().current.counter_lease()
    }
    fn get_meta(&self, name: &str) -> Result<Option<Vec<u8>>, Error> {
        self.0.borrow().current.get_meta(name)
    }
    fn put_meta(&mut self, name: &str, value: &[u8]) -> Result<(), Error> {
        self.0.borrow_mut().inject()?;
        self.0.borrow_mut().current.put_meta(name, value)
    }
    fn put_counter_lease(&mut self, lease: u64) -> Result<(), Error> {
        self.0.borrow_mut().inject()?;
        self.0.borrow_mut().current.put_counter_lease(lease)
    }
    fn get_hint(&self, owner: NodeId, key: &[u8]) -> Result<Option<Hint>, Error> {
        self.0.borrow().current.get_hint(owner, key)
    }
    fn put_hint(&mut self, owner: NodeId, key: &[u8], hint: &Hint) -> Result<(), Error> {
        self.0.borrow_mut().inject()?;
        self.0.borrow_mut().current.put_hint(owner, key, hint)
    }
    fn delete_hint(&mut self, owner: NodeId, key: &[u8]) -> Result<(), Error> {
        self.0.borrow_mut().inject()?;
        self.0.borrow_mut().current.delete_hint(owner, key)
    }
    fn scan_hints(&self) -> Result<Vec<HintMeta>, Error> {
        self.0.borrow().current.scan_hints()
    }
    fn put_purged(&mut self, key: &[u8], seen: &qkv_proto::Seen) -> Result<(), Error> {
        self.0.borrow_mut().inject()?;
        self.0.borrow_mut().current.put_purged(key, seen)
    }
    fn delete_purged(&mut self, key: &[u8]) -> Result<(), Error> {
        self.0.borrow_mut().current.delete_purged(key)
    }
    fn scan_purged(&self) -> Result<Vec<(Vec<u8>, qkv_proto::Seen)>, Error> {
        self.0.borrow().current.scan_purged()
    }
}
