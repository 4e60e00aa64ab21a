//! A simulated disk implementing the core's `Store`: writes are volatile until a
//! flush completes; a crash loses whatever was not flushed.

use std::collections::BTreeMap;

use qkv_coordinator::{Hint, HintMeta, Store};
use qkv_proto::{DvvSet, Error, NodeId};

/// What a node's store holds.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Contents {
    /// Key → state.
    pub data: BTreeMap<Vec<u8>, DvvSet>,
    /// (owner, key) → hint.
    pub hints: BTreeMap<(NodeId, Vec<u8>), Hint>,
}

/// One node's disk: what the process sees, and what survives a crash.
#[derive(Clone, Debug, Default)]
pub struct Disk {
    current: Contents,
    durable: Contents,
}

impl Disk {
    /// What the process sees now.
    pub fn current(&self) -> &Contents {
        &self.current
    }

    /// An fdatasync completed: everything written so far is durable.
    pub fn sync(&mut self) {
        self.durable = self.current.clone();
    }

    /// The process crashed: unflushed writes are gone.
    pub fn crash(&mut self) {
        self.current = self.durable.clone();
    }
}

impl Store for Disk {
    fn get(&self, key: &[u8]) -> Result<Option<DvvSet>, Error> {
        Ok(self.current.data.get(key).cloned())
    }
    fn put(&mut self, key: &[u8], set: &DvvSet) -> Result<(), Error> {
        self.current.data.insert(key.to_vec(), set.clone());
        Ok(())
    }
    fn get_hint(&self, owner: NodeId, key: &[u8]) -> Result<Option<Hint>, Error> {
        Ok(self.current.hints.get(&(owner, key.to_vec())).cloned())
    }
    fn put_hint(&mut self, owner: NodeId, key: &[u8], hint: &Hint) -> Result<(), Error> {
        self.current.hints.insert((owner, key.to_vec()), hint.clone());
        Ok(())
    }
    fn delete_hint(&mut self, owner: NodeId, key: &[u8]) -> Result<(), Error> {
        self.current.hints.remove(&(owner, key.to_vec()));
        Ok(())
    }
    fn scan_hints(&self) -> Result<Vec<HintMeta>, Error> {
        Ok(self
            .current
            .hints
            .iter()
            .map(|((owner, key), h)| HintMeta {
                owner: *owner,
                key: key.clone(),
                bytes: qkv_coordinator::hints::hint_bytes(key, h.set.value_bytes()),
                created_ms: h.created_ms,
            })
            .collect())
    }
}

/// Stores that can be shared between the simulator's bookkeeping and a core.
pub struct SharedDisk(pub std::rc::Rc<std::cell::RefCell<Disk>>);

impl Store for SharedDisk {
    fn get(&self, key: &[u8]) -> Result<Option<DvvSet>, Error> {
        self.0.borrow().get(key)
    }
    fn put(&mut self, key: &[u8], set: &DvvSet) -> Result<(), Error> {
        self.0.borrow_mut().put(key, set)
    }
    fn get_hint(&self, owner: NodeId, key: &[u8]) -> Result<Option<Hint>, Error> {
        self.0.borrow().get_hint(owner, key)
    }
    fn put_hint(&mut self, owner: NodeId, key: &[u8], hint: &Hint) -> Result<(), Error> {
        self.0.borrow_mut().put_hint(owner, key, hint)
    }
    fn delete_hint(&mut self, owner: NodeId, key: &[u8]) -> Result<(), Error> {
        self.0.borrow_mut().delete_hint(owner, key)
    }
    fn scan_hints(&self) -> Result<Vec<HintMeta>, Error> {
        self.0.borrow().scan_hints()
    }
}
