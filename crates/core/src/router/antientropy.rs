//! The router's side of [`crate::antientropy`]: route a peer's comparison to the
//! responder, run this node's timers and exchange with the node as its host, and
//! send what the exchange asks for.

use qkv_proto::{DvvSet, Error, KeyDigest, NodeId, Response};

use super::{Core, Op, OpId, Store};
use crate::antientropy::{AAE_TIMEOUT_MS, Exchange, Host, Step, leaf_digests, responder::Responder};
use crate::merkle::{RangeId, Trees};
use crate::pace::Pace;
use crate::ring::token;

impl<S: Store> Core<S> {
    /// Build the trees and the tombstone list from the store (once, at start). A
    /// stored dot of this node's actor above its lease (a disk gone back to an older
    /// copy of some records), there or in `purged_own` (the highest in the purged
    /// tombstones' records), raises the counter, so it is never minted again.
    pub(super) fn load_trees(&mut self, purged_own: u64) -> Result<(), Error> {
        let (actor, mut highest) = (self.actor, purged_own);
        self.aae.load(&self.store, &self.ring, self.now_ms, |set| highest = highest.max(set.max_counter(actor)))?;
        self.saw_own_counter(highest).map_err(|c| {
            Error::Storage(format!(
                "a stored state names {c}: the data dir is damaged (restore it or replace the node)"
            ))
        })
    }

    /// Exchange step 1, the peer's side.
    pub(super) fn aae_roots(&self, fingerprint: u64, ranges: &[(u32, u64)]) -> Result<Response, Error> {
        let trees = self.aae.trees();
        let me = Responder { me: self.cfg.me, ring: &self.ring, trees, store: &self.store, limits: &self.cfg.limits };
        me.roots(fingerprint, ranges)
    }

    /// Exchange step 2, the peer's side.
    pub(super) fn aae_compare(
        &mut self,
        fingerprint: u64,
        range: RangeId,
        leaves: &[u32],
        entries: Vec<KeyDigest>,
    ) -> Result<Response, Error> {
        let (trees, pace) = self.aae.trees_and_pace();
        let me = Responder { me: self.cfg.me, ring: &self.ring, trees, store: &self.store, limits: &self.cfg.limits };
        me.compare(pace, self.now_ms, fingerprint, range, leaves, entries)
    }

    /// Timers: tombstone GC, and starting or resuming this node's exchange.
    pub(super) fn aae_round(&mut self) {
        let now = self.now_ms;
        let due = self.aae.due(now);
        if self.quiet() {
            // Forgotten, or not yet told its fate: nothing it holds goes to a peer. A
            // running exchange ends, and none starts (the timers move on).
            if let Some((op, x)) = self.aae.take_exchange() {
                self.ops.remove(&op);
                self.aae.finished(x, false, now);
            } else if due.start {
                // The next one is due an interval on (a timer left due would fire at
                // once for ever).
                let _ = self.aae.next_peer(now, |_| false);
            }
            return;
        }
        // No tombstone is purged while a layout change moves data: its confirmations
        // are of the new ring's replicas, and old ones still hold and send the range.
        if due.gc && self.members.cluster.old().is_none() {
            let unconfirmed = self.cfg.bugs().gc_unconfirmed;
            if self.aae.gc_round(&mut self.store, &self.ring, now, unconfirmed) > 0 {
                self.flush_unawaited();
            }
        }
        if due.start {
            let detector = &self.detector;
            let Some(peer) = self.aae.next_peer(now, |p| detector.is_up(p)) else { return };
            let op = self.id();
            self.ops.insert(op, Op::Aae);
            let req = self.aae.start(op, peer, now, self.ring.fingerprint());
            self.send(op, peer, req, AAE_TIMEOUT_MS);
        } else if due.resume {
            self.drive_exchange(|x, host| x.resume(host));
        }
    }

    /// An answer to one of the exchange's requests.
    pub(super) fn aae_response(&mut self, op_id: OpId, result: Result<Response, Error>) {
        if self.aae.exchange_op() != Some(op_id) {
            self.ops.remove(&op_id);
            return;
        }
        self.drive_exchange(|x, host| x.on_answer(host, result));
    }

    /// Run one input of the exchange with this node as its host, then do its step.
    fn drive_exchange(&mut self, input: impl FnOnce(&mut Exchange, &mut ExchangeHost<'_, S>) -> Step) {
        let Some((op, mut x)) = self.aae.take_exchange() else { return };
        let peer = x.peer();
        match input(&mut x, &mut ExchangeHost(self)) {
            Step::Send(reqs) => {
                self.aae.put_back(op, x);
                for req in reqs {
                    self.send(op, peer, req, AAE_TIMEOUT_MS);
                }
            }
            Step::Wait => self.aae.put_back(op, x),
            Step::Done { ok } => {
                self.ops.remove(&op);
                self.aae.finished(x, ok, self.now_ms);
            }
        }
    }
}

/// The node as the host of its own exchange (which is out of `Core::aae` meanwhile).
struct ExchangeHost<'a, S>(&'a mut Core<S>);

impl<S: Store> Host for ExchangeHost<'_, S> {
    fn now_ms(&self) -> u64 {
        self.0.now_ms
    }

    fn fingerprint(&self) -> u64 {
        self.0.ring.fingerprint()
    }

    fn trees(&self) -> &Trees {
        self.0.aae.trees()
    }

    fn locate(&self, key: &[u8]) -> Option<(RangeId, u32)> {
        self.0.aae.trees().locate(&self.0.ring, token(key))
    }

    fn leaf_digests(&self, range: RangeId, leaf: u32, limit: usize) -> Result<Vec<KeyDigest>, Error> {
        leaf_digests(self.0.aae.trees(), &self.0.ring, &self.0.store, range, leaf, limit)
    }

    fn get(&self, key: &[u8]) -> Result<Option<DvvSet>, Error> {
        self.0.store.get(key)
    }

    fn merge(&mut self, key: &[u8], set: &DvvSet) -> Result<bool, Error> {
        self.0.merge_in(key, set)
    }

    fn flush(&mut self) {
        self.0.flush_unawaited();
    }

    fn pace(&mut self) -> &mut Pace {
        self.0.aae.pace_mut()
    }

    fn in_sync(&mut self, range: RangeId, peer: NodeId, in_sync: bool) {
        self.0.aae.set_in_sync(range, peer, in_sync);
    }

    fn repaired(&mut self, n: u64) {
        self.0.aae.count_repaired(n);
    }
}
