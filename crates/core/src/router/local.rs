//! The node's own writes of its data: the local write a coordinator makes (with
//! the counter lease that bounds the dots it mints) and the merge of another
//! replica's state. Every change of a key's stored state goes through `put_data`.

use std::collections::VecDeque;

use qkv_proto::{Context, Dot, DvvSet, Error, Seen};

use super::{COUNTER_LEASE_STEP, Core, OWN_COUNTER_JUMP_MAX, OWN_COUNTER_MAX, Output, Store};
use crate::merkle::digest;
use crate::replica;

impl<S: Store> Core<S> {
    /// Every write of a key's data goes through here: `old` is the digest of the state it
    /// replaces. Keeps the anti-entropy trees and the tombstone list in step with the store.
    pub(super) fn put_data(&mut self, key: &[u8], old: Option<u64>, set: &DvvSet) -> Result<(), Error> {
        let lww;
        let set = if self.cfg.bugs().lww {
            lww = set.newest_only();
            &lww
        } else {
            set
        };
        assert!(set.is_valid(), "node {} stores an invalid version vector set for {key:?}: {set:?}", self.cfg.me);
        self.store.put(key, set)?;
        self.aae.on_write(&self.ring, key, old, Some(set), self.now_ms);
        Ok(())
    }

    /// Merge a state from another replica (a replica write, handoff, read repair or
    /// anti-entropy) into this node's; true when the stored state changed.
    pub(super) fn merge_in(&mut self, key: &[u8], incoming: &DvvSet) -> Result<bool, Error> {
        let local = self.store.get(key)?;
        if !incoming.is_valid() {
            return Err(Error::BadRequest("invalid version vector set".into()));
        }
        // Values a tombstone this node purged had deleted: taking them back would resurrect them.
        let stripped = self.aae.strip_purged(key, incoming, local.as_ref());
        let incoming = stripped.as_ref().unwrap_or(incoming);
        // A dot of this node's actor it does not remember minting (its disk went back
        // to an older copy): never mint it again. Also when nothing else is taken.
        self.saw_own_counter(incoming.max_counter(self.actor))
            .map_err(|c| Error::Protocol(format!("a replica's state names {c}: refused")))?;
        if local.is_none() && incoming.siblings().is_empty() {
            return Ok(false);
        }
        let Some(new) = replica::merge(local.as_ref(), incoming)? else { return Ok(false) };
        if let Err(e) = self.cfg.limits.check_merged(replica::footprint(local.as_ref()), &new) {
            self.stats.key_merges_refused += 1;
            return Err(e);
        }
        self.put_data(key, local.as_ref().map(|l| digest(key, l)), &new)?;
        Ok(true)
    }

    /// Raise the counter to `c`, a counter of this node's actor that a state or a
    /// context names, unless `c` is implausibly far above it (see
    /// [`OWN_COUNTER_JUMP_MAX`]); then the error describes it and nothing changes.
    pub(super) fn saw_own_counter(&mut self, c: u64) -> Result<(), String> {
        if c > self.counter.saturating_add(OWN_COUNTER_JUMP_MAX) || c > OWN_COUNTER_MAX {
            tracing::warn!(
                counter = self.counter,
                "refused a state or context naming counter {c} of this node's actor"
            );
            return Err(format!(
                "counter {c} of node {}'s actor, far above the {} it minted (corrupt or forged)",
                self.cfg.me, self.counter
            ));
        }
        self.counter = self.counter.max(c);
        Ok(())
    }

    /// The coordinator's local write: a fresh dot above every counter this actor minted,
    /// by a writer who saw `seen` (already verified), taking `value`. Returns the new
    /// state, the context for the writer, and the dot; or `None`, leaving `value`, when
    /// the dot would be above the durable lease (the write waits for its sync).
    pub(super) fn coordinate_write(
        &mut self,
        key: &[u8],
        seen: &Seen,
        value: &mut Option<Vec<u8>>,
        write_id: Option<u64>,
    ) -> Result<Option<(DvvSet, Context, Dot)>, Error> {
        let local = self.store.get(key)?;
        let old = local.as_ref().map(|l| digest(key, l));
        // A retry of a write this node took, since overwritten by a writer who saw it:
        // answer with it (and replicate the state that covers it), write nothing.
        if let (Some(l), Some(id)) = (&local, write_id)
            && let Some(dot) = self.recent_writes.get(id, key, value.as_deref())
            && l.find_write(id, value.as_deref()).is_none()
            && l.covers_dot(dot)
        {
            let back = replica::retried(l, seen, dot);
            return Ok(Some((l.clone(), Context::issue(&self.cfg.secret, key, back), dot)));
        }
        // Every intake raised the counter to what it took, so the stored state names no
        // counter of this actor above it; if it does (a bug, or a record the start-up
        // scan did not see), the counter rises and the write waits for a lease above it.
        if let Some(l) = &local {
            self.saw_own_counter(l.max_counter(self.actor))
                .map_err(|c| Error::Storage(format!("the stored state of this key names {c}")))?;
        }
        if self.counter >= self.lease_durable && !self.cfg.bugs().lease_not_durable {
            return Ok(None);
        }
        let before = replica::footprint(local.as_ref());
        let (set, mut back, dot) = replica::coordinate(local, seen, value.take(), self.actor, self.counter, write_id);
        if let Err(e) = self.cfg.limits.check_write(before, &set) {
            self.stats.key_writes_refused += 1;
            return Err(e);
        }
        if self.cfg.bugs().vv_context {
            back = replica::vv_context(seen, dot);
        }
        debug_assert!(set.is_valid(), "a coordinated state is valid before it is stored and sent");
        if dot.actor == self.actor {
            // (A retry is answered with its first dot, which may be another node's.)
            self.counter = self.counter.max(dot.counter);
            self.check_minted(dot.counter);
        }
        if self.cfg.bugs().lease_not_durable && self.counter >= self.counter_lease {
            // The old rule: the lease rides with this write's own flush, in the OS buffer only.
            self.counter_lease = self.counter + COUNTER_LEASE_STEP;
            self.store.put_counter_lease(self.counter_lease)?;
            self.lease_durable = self.counter_lease;
        }
        self.put_data(key, old, &set)?;
        if let Some(id) = write_id
            && let Some(sib) = set.siblings().iter().find(|s| s.dot == dot)
        {
            self.recent_writes.insert(self.now_ms, id, key, sib.value.as_deref(), dot);
        }
        Ok(Some((set, Context::issue(&self.cfg.secret, key, back), dot)))
    }

    /// Whether a write that saw `seen` may mint its dot now: the next counter (above every
    /// counter of this actor the node minted, and any a verified context names, so a dot
    /// handed out before a power loss is never minted again) is within the durable lease.
    /// Renews the lease, with a sync of its own, when it is within half a step.
    /// An error when the context names an implausible counter of this actor, or when
    /// the write would wait for a lease that could not be recorded.
    pub(super) fn lease_ready(&mut self, seen: &Seen) -> Result<bool, Error> {
        self.saw_own_counter(seen.max_counter(self.actor))
            .map_err(|c| Error::BadRequest(format!("the context names {c}: refused")))?;
        if self.cfg.bugs().lease_not_durable {
            return Ok(true);
        }
        if self.counter.saturating_add(COUNTER_LEASE_STEP / 2) >= self.counter_lease && self.lease_syncs.is_empty() {
            let lease = self.counter.saturating_add(COUNTER_LEASE_STEP);
            match self.store.put_counter_lease(lease) {
                Ok(()) => {
                    self.counter_lease = lease;
                    let token = self.id();
                    self.lease_syncs.insert(token, lease);
                    self.out.push_back(Output::Flush { token, sync: true });
                }
                // Nothing would wake a write that waited: refuse it (the next one tries again).
                Err(e) if self.counter >= self.lease_durable => {
                    return Err(Error::Storage(format!("recording a counter lease: {e}")));
                }
                Err(e) => tracing::warn!("recording a counter lease: {e}"),
            }
        }
        Ok(self.counter < self.lease_durable)
    }

    /// Writes that waited for the lease past their time give up: nothing was written.
    pub(super) fn expire_lease_waiters(&mut self) {
        if self.lease_waiters.iter().all(|w| w.0 > self.now_ms) {
            return;
        }
        let now = self.now_ms;
        let (expired, waiting): (VecDeque<_>, _) =
            std::mem::take(&mut self.lease_waiters).into_iter().partition(|w| w.0 <= now);
        self.lease_waiters = waiting;
        for (_, req, _) in expired {
            let e = "the counter lease's sync did not finish in time; nothing was written";
            self.reply(req, Err(Error::Storage(e.into())));
        }
    }
}
