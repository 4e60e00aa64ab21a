//! The node's own writes of its data: the local write a coordinator makes (with
//! the counter lease that bounds the dots it mints) and the merge of another
//! replica's state. Every change of a key's stored state goes through `put_data`.

use qkv_proto::{Context, Dot, DvvSet, Error, Seen};

use super::{COUNTER_LEASE_STEP, Core, Output, Store};
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
        if local.is_none() && incoming.siblings().is_empty() {
            return Ok(false);
        }
        // A dot of this node's actor it does not remember minting (its disk went back
        // to an older copy): never mint it again.
        self.counter = self.counter.max(incoming.clock().get(self.actor));
        let Some(new) = replica::merge(local.as_ref(), incoming)? else { return Ok(false) };
        if let Err(e) = self.cfg.limits.check_merged(replica::footprint(local.as_ref()), &new) {
            self.stats.key_merges_refused += 1;
            return Err(e);
        }
        self.put_data(key, local.as_ref().map(|l| digest(key, l)), &new)?;
        Ok(true)
    }

    /// The coordinator's local write: a fresh dot above every counter this actor minted,
    /// by a writer who saw `seen` (already verified). Returns the new state, the
    /// context for the writer, and the dot.
    pub(super) fn coordinate_write(
        &mut self,
        key: &[u8],
        seen: &Seen,
        value: Option<Vec<u8>>,
        write_id: Option<u64>,
    ) -> Result<(DvvSet, Context, Dot), Error> {
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
            return Ok((l.clone(), Context::issue(&self.cfg.secret, key, back), dot));
        }
        let before = replica::footprint(local.as_ref());
        let (set, mut back, dot) = replica::coordinate(local, seen, value, self.actor, self.counter, write_id);
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
        Ok((set, Context::issue(&self.cfg.secret, key, back), dot))
    }

    /// Whether a write that saw `seen` may mint its dot now: the next counter (above every
    /// counter of this actor the node minted, and any a verified context names, so a dot
    /// handed out before a power loss is never minted again) is within the durable lease.
    /// Renews the lease, with a sync of its own, when it is within half a step.
    pub(super) fn lease_ready(&mut self, seen: &Seen) -> bool {
        let own = seen.dots.iter().filter(|d| d.actor == self.actor).map(|d| d.counter).max().unwrap_or(0);
        self.counter = self.counter.max(seen.vv.get(self.actor)).max(own);
        if self.cfg.bugs().lease_not_durable {
            return true;
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
                // The next write tries again.
                Err(e) => tracing::warn!("recording a counter lease: {e}"),
            }
        }
        self.counter < self.lease_durable
    }
}
