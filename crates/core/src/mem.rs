//! An in-memory [`Store`], for tests and the simulator.

use std::collections::BTreeMap;

use qkv_proto::{DvvSet, Error, NodeId, Seen};

use crate::hints::hint_bytes;
use crate::ring::token;
use crate::router::{Hint, HintMeta, Store};

/// Everything a node stores, in memory, ordered as [`Store::scan`] wants.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MemStore {
    /// (token, key) → state.
    pub data: BTreeMap<(u64, Vec<u8>), DvvSet>,
    /// (owner, key) → hint.
    pub hints: BTreeMap<(NodeId, Vec<u8>), Hint>,
    /// The actor's counter lease.
    pub counter_lease: u64,
    /// Purged tombstones: key → what they had seen.
    pub purged: BTreeMap<Vec<u8>, Seen>,
    /// How many of the next counter-lease writes fail (a test's injected I/O error).
    pub fail_lease_writes: u32,
    /// Membership records.
    pub meta: BTreeMap<String, Vec<u8>>,
    /// How many of the next writes of the `cluster` record fail (an injected I/O error).
    pub fail_cluster_writes: u32,
}

impl MemStore {
    /// The state of `key`.
    pub fn value(&self, key: &[u8]) -> Option<&DvvSet> {
        self.data.get(&(token(key), key.to_vec()))
    }

    /// Every key and its state, in token order.
    pub fn entries(&self) -> impl Iterator<Item = (&[u8], &DvvSet)> {
        self.data.iter().map(|((_, k), s)| (k.as_slice(), s))
    }
}

impl Store for MemStore {
    fn get(&self, key: &[u8]) -> Result<Option<DvvSet>, Error> {
        Ok(self.value(key).cloned())
    }
    fn put(&mut self, key: &[u8], set: &DvvSet) -> Result<(), Error> {
        self.data.insert((token(key), key.to_vec()), set.clone());
        Ok(())
    }
    fn delete(&mut self, key: &[u8]) -> Result<(), Error> {
        self.data.remove(&(token(key), key.to_vec()));
        Ok(())
    }
    fn scan(&self, from: (u64, &[u8]), to: u64, limit: usize) -> Result<Vec<(Vec<u8>, DvvSet)>, Error> {
        Ok(self
            .data
            .range((from.0, from.1.to_vec())..)
            .take_while(|((t, _), _)| *t <= to)
            .take(limit)
            .map(|((_, k), s)| (k.clone(), s.clone()))
            .collect())
    }
    fn counter_lease(&self) -> Result<u64, Error> {
        Ok(self.counter_lease)
    }
    fn put_counter_lease(&mut self, lease: u64) -> Result<(), Error> {
        if self.fail_lease_writes > 0 {
            self.fail_lease_writes -= 1;
            return Err(Error::Storage("injected: writing the counter lease".into()));
        }
        self.counter_lease = lease;
        Ok(())
    }
    fn get_hint(&self, owner: NodeId, key: &[u8]) -> Result<Option<Hint>, Error> {
        Ok(self.hints.get(&(owner, key.to_vec())).cloned())
    }
    fn put_hint(&mut self, owner: NodeId, key: &[u8], hint: &Hint) -> Result<(), Error> {
        self.hints.insert((owner, key.to_vec()), hint.clone());
        Ok(())
    }
    fn delete_hint(&mut self, owner: NodeId, key: &[u8]) -> Result<(), Error> {
        self.hints.remove(&(owner, key.to_vec()));
        Ok(())
    }
    fn scan_hints(&self) -> Result<Vec<HintMeta>, Error> {
        Ok(self
            .hints
            .iter()
            .map(|((owner, key), h)| HintMeta {
                owner: *owner,
                key: key.clone(),
                bytes: hint_bytes(key, h.set.value_bytes()),
                created_ms: h.created_ms,
            })
            .collect())
    }
    fn put_purged(&mut self, key: &[u8], seen: &Seen) -> Result<(), Error> {
        self.purged.insert(key.to_vec(), seen.clone());
        Ok(())
    }
    fn delete_purged(&mut self, key: &[u8]) -> Result<(), Error> {
        self.purged.remove(key);
        Ok(())
    }
    fn scan_purged(&self) -> Result<Vec<(Vec<u8>, Seen)>, Error> {
        Ok(self.purged.iter().map(|(k, s)| (k.clone(), s.clone())).collect())
    }
    fn get_meta(&self, name: &str) -> Result<Option<Vec<u8>>, Error> {
        Ok(self.meta.get(name).cloned())
    }
    fn put_meta(&mut self, name: &str, value: &[u8]) -> Result<(), Error> {
        if name == "cluster" && self.fail_cluster_writes > 0 {
            self.fail_cluster_writes -= 1;
            return Err(Error::Storage("injected: writing the cluster layout".into()));
        }
        self.meta.insert(name.to_string(), value.to_vec());
        Ok(())
    }
}
