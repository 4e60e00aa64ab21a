//! The node's own writes of its data: the local write a coordinator makes (with
//! the counter lease that bounds the dots it mints) and the merge of another
//! replica's state. Every change of a key's stored state goes through `put_data`.

use std::collections::VecDeque;

use qkv_proto::{Context, Dot, DvvSet, Error, PutRequest, Seen};

use super::{COUNTER_LEASE_STEP, Core, OWN_COUNTER_JUMP_MAX, OWN_COUNTER_MAX, Output, ReqId, Store};
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
        if self.counter >= OWN_COUNTER_MAX {
            let e = format!("node {} minted every counter its actor may ({OWN_COUNTER_MAX}): replace it", self.cfg.me);
            return Err(Error::Storage(e));
        }
        if self.cfg.bugs().lease_not_durable {
            return Ok(true);
        }
        self.renew_lease()?;
        Ok(self.counter < self.lease_durable)
    }

    /// Record a lease a step above the counter, with a sync of its own, when the
    /// counter is within half a step of the recorded one and no renewal is in flight.
    /// An error when it cannot be recorded and a write would wait for it.
    pub(super) fn renew_lease(&mut self) -> Result<(), Error> {
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
        Ok(())
    }

    /// Writes that waited for the lease past their time give up: nothing was written.
    pub(super) fn expire_lease_waiters(&mut self) {
        for req in self.lease_waiters.expire(self.now_ms) {
            self.reply(req, Err(lease_wait_expired()));
        }
    }
}

/// The answer to a write whose wait for the counter lease ran out.
pub(super) fn lease_wait_expired() -> Error {
    Error::Storage("the counter lease's sync did not finish in time; nothing was written".into())
}

/// Client writes waiting for the counter lease's sync before they mint a dot, each
/// with the time it gives up (at most [`super::LEASE_WAITERS_MAX`]).
#[derive(Debug, Default)]
pub(super) struct LeaseWaiters {
    queue: VecDeque<(u64, ReqId, PutRequest)>,
    /// The earliest give-up time in the queue (`u64::MAX`: none), so the driver's
    /// frequent `poll_timeout` does not scan it.
    due_ms: u64,
}

impl LeaseWaiters {
    pub(super) fn len(&self) -> usize {
        self.queue.len()
    }

    pub(super) fn push(&mut self, give_up_ms: u64, req: ReqId, p: PutRequest) {
        self.due_ms = if self.queue.is_empty() { give_up_ms } else { self.due_ms.min(give_up_ms) };
        self.queue.push_back((give_up_ms, req, p));
    }

    /// When the next waiter gives up.
    pub(super) fn due_ms(&self) -> u64 {
        if self.queue.is_empty() { u64::MAX } else { self.due_ms }
    }

    /// Every waiter, to start again.
    pub(super) fn take(&mut self) -> VecDeque<(u64, ReqId, PutRequest)> {
        std::mem::take(&mut self.queue)
    }

    /// Remove the waiters due at `now`; returns their requests.
    fn expire(&mut self, now: u64) -> Vec<ReqId> {
        if self.due_ms() > now {
            return vec![];
        }
        let (expired, waiting): (VecDeque<_>, _) = self.take().into_iter().partition(|w| w.0 <= now);
        self.queue = waiting;
        self.due_ms = self.queue.iter().map(|w| w.0).min().unwrap_or(u64::MAX);
        expired.into_iter().map(|w| w.1).collect()
    }
}

#[cfg(test)]
mod tests {
    use qkv_proto::{Dot, DvvSet, Level, Request, Response};

    use super::super::{Core, CoreConfig, Output};
    use crate::mem::MemStore;

    fn core() -> Core<MemStore> {
        let cfg = CoreConfig {
            me: 1,
            incarnation: 1,
            hints: Default::default(),
            layout: crate::layout::Layout::legacy(&[(1, "node1".into())], 16, 1).unwrap(),
            limits: Default::default(),
            request_timeout_ms: 1000,
            ping_interval_ms: 100,
            down_after_ms: 300,
            epoch: 1,
            aae: Default::default(),
            secret: qkv_proto::Secret([3; qkv_proto::context::SECRET_BYTES]),
            transfer_bytes_per_s: crate::router::TRANSFER_BYTES_PER_S_DEFAULT,
            bugs: Default::default(),
        };
        Core::new(cfg, MemStore::default(), 0, 1_000_000).unwrap()
    }

    fn put(key: &str) -> Request {
        Request::Put(qkv_proto::PutRequest {
            key: key.into(),
            value: Some(b"v".to_vec()),
            context: qkv_proto::Context::empty(),
            w: Level::One,
            strict: false,
            timeout_ms: None,
            forwarded: false,
            write_id: None,
            session: None,
        })
    }

    /// Outputs until quiet, flushes completing at `now`; sync flushes are held (returned) unless `sync_ok`.
    fn settle(core: &mut Core<MemStore>, now: u64, sync_ok: bool) -> (Vec<Response>, Vec<u64>) {
        let (mut replies, mut held) = (vec![], vec![]);
        while let Some(o) = core.poll_output() {
            match o {
                Output::Flush { token, sync: true } if !sync_ok => held.push(token),
                Output::Flush { token, .. } => core.handle_flushed(now, token, Ok(())),
                Output::Reply { resp, .. } => replies.push(resp),
                Output::Send { .. } => panic!("a lone node sends nothing"),
            }
        }
        (replies, held)
    }

    /// A stored state naming a counter of this actor above the counter (one the
    /// start-up scan did not see): the write waits for a lease renewed above it, and
    /// is not left with no sync to wake it.
    #[test]
    fn a_stored_counter_above_the_lease_renews_it_and_the_write_goes_on() {
        let mut c = core();
        c.handle_request(0, 1, put("a"));
        assert!(matches!(settle(&mut c, 0, true).0[..], [Response::Put(_)]));
        let far = c.lease_durable + 5;
        let mut set = DvvSet::new();
        let me = c.actor;
        set.apply(&qkv_proto::Seen::new(), Some(b"x".to_vec()), Dot { actor: me, counter: far }, None);
        assert!(set.max_counter(me) == far && set.is_valid(), "{set:?}");
        crate::router::Store::put(&mut c.store, b"k", &set).unwrap();
        c.handle_request(0, 2, put("k"));
        let (replies, _) = settle(&mut c, 0, true);
        assert!(matches!(replies[..], [Response::Put(_)]), "{replies:?}");
        assert!(c.store.value(b"k").unwrap().max_counter(me) > far, "minted above the stored counter");
    }

    /// A write whose lease sync ends after it gave up writes nothing, even before its
    /// expiry runs.
    #[test]
    fn a_waiter_woken_after_its_time_writes_nothing() {
        let mut c = core();
        c.handle_request(0, 1, put("k"));
        let (replies, held) = settle(&mut c, 0, false);
        assert!(replies.is_empty() && held.len() == 1, "{replies:?} {held:?}");
        c.handle_flushed(5_000, held[0], Ok(()));
        let (replies, _) = settle(&mut c, 5_000, true);
        assert!(
            matches!(&replies[..], [Response::Error(qkv_proto::Error::Storage(m))] if m.contains("nothing was written"))
        );
        assert!(c.store.value(b"k").is_none());
    }
}
