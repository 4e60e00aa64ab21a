//! Hinted handoff: push held hints to their owners when they are up, in paced
//! batches; delete a hint only once its owner acknowledged it durably, and only
//! if it did not change while the batch was in flight.
//!
//! Hints age, from the newest write each took (so every write a stand-in
//! acknowledged is kept a grace). A tombstone is purged no sooner than one grace
//! period after the delete, so a hint applied within one grace period of its write
//! can never bring back a value deleted after it; the older siblings of a hint that
//! took later writes are covered by purge records (two graces) and the hint window
//! (within the grace, so a hint stops taking writes a grace after its owner went
//! down). So a hint whose owner stays down past half the
//! grace goes to another home replica of its key that is up (anti-entropy brings
//! the owner up to date when it returns), and a hint older than the grace is
//! dropped, counted and logged: its write survives only where it reached a home
//! replica (all of them down for half the grace, with sloppy W met by stand-ins
//! alone, is the case it does not). Without anti-entropy nothing is purged, and
//! hints wait for their owner however long it takes.

use std::collections::BTreeSet;

use qkv_proto::{Error, KeyState, Request, Response};

use qkv_proto::NodeId;

use super::{Core, HANDOFF_TIMEOUT_MS, Op, OpId, Store};
use crate::hints::hint_bytes;

impl<S: Store> Core<S> {
    pub(super) fn handoff_round(&mut self) {
        self.expire_hints();
        for owner in self.hints.ready_owners() {
            if !self.is_up(owner) {
                self.redirect_hints(owner);
                continue;
            }
            let keys = self.hints.next_batch(owner, self.now_ms);
            let mut items = vec![];
            for key in keys {
                match self.store.get_hint(owner, &key) {
                    Ok(Some(h)) => items.push((key, h.set)),
                    // Gone from the store: forget it here too.
                    Ok(None) => self.hints.remove(owner, &key),
                    Err(e) => tracing::warn!(owner, "reading a hint: {e}"),
                }
            }
            if items.is_empty() {
                self.hints.batch_done(owner, 0, 0, self.now_ms);
                continue;
            }
            let batch = items.iter().map(|(key, set)| KeyState { key: key.clone(), set: set.clone() }).collect();
            let op = self.id();
            self.ops.insert(op, Op::Handoff { owner, redirected: false, items });
            self.send(op, owner, Request::ReplicaPutBatch { items: batch }, HANDOFF_TIMEOUT_MS);
        }
    }

    /// Drop hints older than the tombstone grace (see the module docs).
    fn expire_hints(&mut self) {
        if !self.aae.enabled() {
            // No tombstone is ever purged, so no hint can bring a deleted value back.
            return;
        }
        let Some(cutoff) = self.wall_ms().checked_sub(self.aae.grace_ms()) else { return };
        for owner in self.hints.owners_held() {
            if self.is_up(owner) {
                // Being handed off: delivering is always better than dropping.
                continue;
            }
            for key in self.hints.older_than(owner, cutoff, crate::hints::BATCH_KEYS_MAX) {
                if let Err(e) = self.store.delete_hint(owner, &key) {
                    tracing::warn!(owner, "dropping an expired hint: {e}");
                    continue;
                }
                tracing::warn!(
                    owner,
                    key = %String::from_utf8_lossy(&key[..key.len().min(64)]),
                    "dropped a hint older than the tombstone grace: its owner and the key's other home \
                     replicas were down all that time"
                );
                self.hints.remove(owner, &key);
                self.hints.expired += 1;
            }
        }
    }

    /// Hints for `owner`, down, older than half the grace: to another home replica of
    /// their key that is up, one batch (one target) at a time.
    fn redirect_hints(&mut self, owner: NodeId) {
        if !self.aae.enabled() {
            // Only anti-entropy would bring the owner the redirected write.
            return;
        }
        let half = self.aae.grace_ms() / 2;
        let Some(cutoff) = self.wall_ms().checked_sub(half) else { return };
        let me = self.cfg.me;
        let mut target = None;
        let mut items = vec![];
        let mut bytes = 0u64;
        // Look past hints no home replica can take now, so they do not hold back the rest.
        for key in self.hints.older_than(owner, cutoff, 16 * crate::hints::BATCH_KEYS_MAX) {
            if items.len() >= crate::hints::BATCH_KEYS_MAX {
                break;
            }
            if self.hints.is_resting(owner, &key, self.now_ms) {
                continue;
            }
            let to = self.ring.preference_list(&key).iter().copied().find(|&n| n != owner && n != me && self.is_up(n));
            let Some(to) = to else { continue };
            if *target.get_or_insert(to) != to {
                continue;
            }
            match self.store.get_hint(owner, &key) {
                Ok(Some(h)) => {
                    bytes += hint_bytes(&key, h.set.value_bytes());
                    items.push((key, h.set));
                }
                Ok(None) => self.hints.remove(owner, &key),
                Err(e) => tracing::warn!(owner, "reading a hint: {e}"),
            }
            if bytes >= self.hints.limits().batch_bytes_max {
                break;
            }
        }
        let Some(to) = target else { return };
        if items.is_empty() || !self.hints.start_batch(owner, bytes, self.now_ms) {
            return;
        }
        let batch = items.iter().map(|(key, set)| KeyState { key: key.clone(), set: set.clone() }).collect();
        let op = self.id();
        self.ops.insert(op, Op::Handoff { owner, redirected: true, items });
        self.send(op, to, Request::ReplicaPutBatch { items: batch }, HANDOFF_TIMEOUT_MS);
    }

    pub(super) fn handoff_response(&mut self, op_id: OpId, result: Result<Response, Error>) {
        let Some(Op::Handoff { owner, redirected, items }) = self.ops.remove(&op_id) else { return };
        let (mut delivered, mut bytes) = (0u64, 0u64);
        // Items the receiver refused (their key is past its merge limit there) stay and
        // rest a while; the rest are delivered. A list naming items the batch did not
        // hold is a broken peer: nothing counts as delivered.
        let refused: Option<BTreeSet<u32>> = match &result {
            Ok(Response::ReplicaAck) => Some(BTreeSet::new()),
            Ok(Response::ReplicaBatchAck { refused }) if refused.iter().all(|&i| (i as usize) < items.len()) => {
                Some(refused.iter().copied().collect())
            }
            Ok(other) => {
                tracing::warn!(owner, "handoff batch answered with {other:?}");
                None
            }
            Err(_) => None,
        };
        if let Some(refused) = refused {
            if !refused.is_empty() {
                tracing::warn!(owner, "{} handed-off hints refused at the key's limit: kept", refused.len());
            }
            for (i, (key, sent)) in items.into_iter().enumerate() {
                if refused.contains(&(i as u32)) {
                    self.hints.refused_by_owner(owner, &key, self.now_ms);
                    continue;
                }
                match self.store.get_hint(owner, &key) {
                    Ok(Some(h)) if h.set == sent => {
                        if let Err(e) = self.store.delete_hint(owner, &key) {
                            tracing::warn!(owner, "deleting a handed-off hint: {e}");
                            continue;
                        }
                        self.hints.remove(owner, &key);
                        delivered += 1;
                        bytes += hint_bytes(&key, sent.value_bytes());
                    }
                    // Changed in flight: the newer hint goes in a later batch.
                    _ => {}
                }
            }
        } else if let Err(e) = result {
            tracing::debug!(owner, "handoff batch failed: {e}");
        }
        if redirected {
            self.hints.redirected += delivered;
        }
        self.hints.batch_done(owner, delivered, bytes, self.now_ms);
    }
}
