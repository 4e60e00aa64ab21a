//! Writes: routing to a home coordinator, the local write, replication to home
//! replicas and (sloppy writes) to stand-ins for those that are down or fail,
//! and the replica side: merging writes, batches and hints.

use qkv_proto::{Context, DvvSet, Error, KeyState, NodeId, PutReply, PutRequest, Request, Response};

use super::{
    Core, FORWARD_MARGIN_MS, Hint, LEASE_WAITERS_MAX, Op, OpId, PendingPut, PutState, ReqId, Store, unexpected,
};
use crate::hints::{BATCH_KEYS_MAX, hint_bytes};
use crate::placement;
use crate::put::{PutOp, PutOutcome};
use crate::replica;
use crate::route::{WriteRoute, check_available, route_write};

impl<S: Store> Core<S> {
    pub(super) fn start_put(&mut self, req: ReqId, p: PutRequest) -> Result<Option<Response>, Error> {
        self.start_put_by(req, p, None)
    }

    /// A put, started now or again after waiting for the counter lease until at most
    /// `give_up_ms` (then it has the rest of its time).
    pub(super) fn start_put_by(
        &mut self,
        req: ReqId,
        p: PutRequest,
        give_up_ms: Option<u64>,
    ) -> Result<Option<Response>, Error> {
        let mut p = p;
        self.cfg.limits.check(&p.key, p.value.as_deref())?;
        let timeout_ms = self.timeout_ms(p.timeout_ms)?;
        // A write that waited for the lease past its time writes nothing (its expiry,
        // due now, has not run yet).
        if give_up_ms.is_some_and(|t| t <= self.now_ms) {
            return Err(super::local::lease_wait_expired());
        }
        let give_up_ms = give_up_ms.unwrap_or(self.now_ms + timeout_ms);
        let timeout_ms = give_up_ms.saturating_sub(self.now_ms).max(1);
        let n = self.ring.n();
        p.w.required(n)?;
        let home = self.ring.preference_list(&p.key).to_vec();
        let me = self.cfg.me;
        if let WriteRoute::Forward(to) = route_write(&home, me, p.forwarded, |id| self.is_up(id))? {
            let op = self.id();
            self.ops.insert(op, Op::Forward { req });
            self.send(op, to, Request::Put(PutRequest { forwarded: true, ..p }), timeout_ms + FORWARD_MARGIN_MS);
            return Ok(None);
        }
        let strict = p.strict && !self.cfg.bugs().strict_counts_standins;
        let alive = placement::write_alive(self.ring.walk(&p.key), n, strict, |id| self.is_up(id));
        let needed = check_available(p.w, n, alive)?;
        // A context is untrusted input: only one the cluster issued for this key may delete siblings.
        let seen = p.context.verify(&self.cfg.secret, &p.key)?.clone();
        // So is a session's floor: it only ever goes back to the session, but a forged
        // one would make the session wait for writes that never were.
        let floor = match &p.session {
            Some(f) => Some(f.verify(&self.cfg.secret, &p.key)?.clone()),
            None => None,
        };
        let minted = match self.lease_ready(&seen)? {
            true => self.coordinate_write(&p.key, &seen, &mut p.value, p.write_id)?,
            false => None,
        };
        let Some((set, ctx, dot)) = minted else {
            // No dot is minted above the durable lease: wait for the lease's sync (a few
            // ms). The stored state may have raised the counter past the lease: renew it
            // (unless a sync is in flight, which wakes every waiter when it ends).
            self.renew_lease()?;
            if self.lease_waiters.len() >= LEASE_WAITERS_MAX {
                return Err(Error::Storage(format!("{LEASE_WAITERS_MAX} writes are waiting for a counter lease")));
            }
            self.lease_waiters.push(give_up_ms, req, p);
            return Ok(None);
        };
        let op = self.id();
        debug_assert!(dot.actor != self.actor || dot.counter <= self.lease_durable, "no dot above the durable lease");
        let session = floor.map(|f| Context::issue(&self.cfg.secret, &p.key, f.joined(&ctx.seen)));
        let pending = PendingPut { req, key: p.key, set, ctx, session, dot, needed, timeout_ms, strict };
        if self.cfg.bugs().ack_before_flush {
            self.flush_unawaited();
            self.replicate(op, pending);
            return Ok(None);
        }
        self.ops.insert(op, Op::PutFlush(pending));
        self.flush(op);
        Ok(None)
    }

    /// The local write is durable: send it to the other home replicas, and to
    /// stand-ins for home replicas that are down (sloppy writes only).
    pub(super) fn replicate(&mut self, op_id: OpId, pending: PendingPut) {
        let PendingPut { req, key, set, ctx, session, dot, needed, timeout_ms, strict } = pending;
        let me = self.cfg.me;
        let n = self.ring.n();
        let walk = self.ring.walk(&key);
        let home = walk[..n].to_vec();
        let placement = placement::write_targets(walk, n, me, strict, |id| self.is_up(id));
        let mut op = PutOp::new(me, placement.targets.clone(), needed, self.now_ms, timeout_ms);
        // During a layout transition the old home set gets it too (and, strict, W of it),
        // until every node reads from the new one (the `dropping` step).
        let joint = !self.cfg.bugs().no_joint_writes
            && self.members.old_ring.is_some()
            && self.members.cluster.phase() != crate::membership::Phase::Dropping;
        if let Some(old) = self.members.old_ring.as_ref().filter(|_| joint) {
            op.joint(old.preference_list(&key), strict);
        }
        let targets: Vec<NodeId> = std::iter::once(me).chain(op.remote_targets()).collect();
        let decided = op.poll();
        let epoch = self.members.cluster.epoch();
        let state = PutState { req, op, ctx, session, dot, key, set, home, placement, sloppy: !strict, epoch };
        if let Some(outcome) = decided {
            // Answered already (W = 1): the other replicas still get the write.
            let track = self.put_answer(&state, outcome);
            let remote: Vec<NodeId> = targets.into_iter().filter(|&t| t != me).collect();
            self.put_tail(op_id, track, remote.len());
            for t in remote {
                let msg = replica_write(&state, t);
                self.send(op_id, t, msg, timeout_ms);
            }
            return;
        }
        self.deadlines.insert((state.op.deadline_ms(), op_id));
        // A sloppy write gives home replicas half the time, so a stand-in can still take over.
        let home_timeout = if state.sloppy { (timeout_ms / 2).max(1) } else { timeout_ms };
        let sends: Vec<(NodeId, Request, u64)> = targets
            .into_iter()
            .filter(|&t| t != me)
            .map(|t| {
                let timeout = if state.placement.owners.contains_key(&t) { timeout_ms } else { home_timeout };
                (t, replica_write(&state, t), timeout)
            })
            .collect();
        self.ops.insert(op_id, Op::Put(Box::new(state)));
        for (t, msg, timeout) in sends {
            self.send(op_id, t, msg, timeout);
        }
    }

    /// Answer the client; a successful write starts its time-to-all-replicas track.
    fn put_answer(&mut self, state: &PutState, outcome: PutOutcome) -> Option<u64> {
        let me = self.cfg.me;
        let mut track = None;
        let resp = outcome.map(|acked| {
            let home_acks: Vec<NodeId> = acked.iter().copied().filter(|a| state.home.contains(a)).collect();
            let missing = state.home.iter().copied().filter(|h| !home_acks.contains(h)).collect();
            track = self.lag.start(&state.key, state.dot, self.now_ms, missing);
            let standin_acks =
                acked.iter().filter_map(|a| state.placement.owners.get(a).map(|owner| (*a, *owner))).collect();
            Response::Put(PutReply {
                context: state.ctx.clone(),
                dot: state.dot,
                home_acks,
                standin_acks,
                coordinator: me,
                session: state.session.clone(),
            })
        });
        self.reply(state.req, resp);
        track
    }

    /// After the answer, replicas still to answer keep counting toward the write's lag;
    /// with none left (N = 1, or all answered) nothing is kept.
    fn put_tail(&mut self, op_id: OpId, track: Option<u64>, outstanding: usize) {
        if outstanding > 0 {
            self.ops.insert(op_id, Op::PutTail { track, outstanding });
        }
    }

    /// A replica's answer after the client was answered: it only counts toward the lag.
    pub(super) fn put_tail_response(&mut self, op_id: OpId, from: NodeId, result: Result<Response, Error>) {
        let Some(Op::PutTail { track, outstanding }) = self.ops.get_mut(&op_id) else { return };
        let track = *track;
        *outstanding = outstanding.saturating_sub(1);
        if *outstanding == 0 {
            self.ops.remove(&op_id);
        }
        if let (Some(t), Ok(Response::ReplicaAck)) = (track, result) {
            self.lag.applied(t, from, self.now_ms);
        }
    }

    pub(super) fn put_response(&mut self, op_id: OpId, from: NodeId, result: Result<Response, Error>) {
        let Some(Op::Put(state)) = self.ops.get_mut(&op_id) else { return };
        let outcome = match result {
            Ok(Response::ReplicaAck) => state.op.on_ack(from),
            other => {
                let err = match other {
                    Ok(r) => unexpected(from, &r),
                    Err(e) => e,
                };
                // Sloppy: the next up node after the top N takes over, for the same owner;
                // not for a replica that answered it cannot merge the key (it is up, and
                // its hint could never be handed to it).
                let mut standin = None;
                if state.sloppy && !state.op.is_extra(from) && !matches!(err, Error::KeyFull { .. }) {
                    let detector = &self.detector;
                    standin = state.placement.take_over(from, |c| detector.is_up(c));
                }
                if let Some((c, _)) = standin {
                    state.op.add_target(c);
                }
                let outcome = state.op.on_failure(from, err);
                if let Some((c, owner)) = standin {
                    let msg = Request::ReplicaHint { owner, key: state.key.clone(), set: state.set.clone() };
                    let left = state.op.deadline_ms().saturating_sub(self.now_ms);
                    self.send(op_id, c, msg, left);
                }
                outcome
            }
        };
        self.put_decided(op_id, outcome);
    }

    pub(super) fn put_deadline(&mut self, op_id: OpId) {
        let now = self.now_ms;
        let Some(Op::Put(state)) = self.ops.get_mut(&op_id) else { return };
        let outcome = state.op.on_timeout(now);
        self.put_decided(op_id, outcome);
    }

    fn put_decided(&mut self, op_id: OpId, outcome: Option<PutOutcome>) {
        let Some(outcome) = outcome else { return };
        if let Some(Op::Put(state)) = self.ops.remove(&op_id) {
            self.deadlines.remove(&(state.op.deadline_ms(), op_id));
            let track = self.put_answer(&state, outcome);
            self.put_tail(op_id, track, state.op.pending_targets().len());
        }
    }

    pub(super) fn forward_response(&mut self, op_id: OpId, from: NodeId, result: Result<Response, Error>) {
        let Some(Op::Forward { req }) = self.ops.remove(&op_id) else { return };
        let resp = match result {
            Ok(r @ Response::Put(_)) => Ok(r),
            Ok(other) => Err(unexpected(from, &other)),
            Err(Error::Unreachable(e)) => {
                Err(Error::Unreachable(format!("forwarding to coordinator node {from}: {e}")))
            }
            Err(e) => Err(e),
        };
        self.reply(req, resp);
    }

    /// Merge an incoming replica write; ack only after a flush.
    ///
    /// Even when the merge changes nothing: the state may be an earlier copy of the
    /// same write (a duplicated message, a retry, a read repair) whose flush has not
    /// completed, and acking it now would ack a write a power loss can still take.
    /// (Found by the simulator: a stale strict read after a power loss.)
    pub(super) fn replica_put(&mut self, req: ReqId, key: &[u8], set: &DvvSet) -> Result<Option<Response>, Error> {
        self.cfg.limits.check(key, None)?;
        self.check_homed(key)?;
        self.merge_in(key, set)?;
        self.await_flush(req, vec![], false);
        Ok(None)
    }

    /// Hinted handoff arriving at the owner: merge every item, one flush for all.
    pub(super) fn replica_put_batch(
        &mut self,
        req: ReqId,
        items: Vec<KeyState>,
        sync: bool,
    ) -> Result<Option<Response>, Error> {
        if items.len() > BATCH_KEYS_MAX {
            return Err(Error::BadRequest(format!("a batch holds at most {BATCH_KEYS_MAX} keys, got {}", items.len())));
        }
        for it in &items {
            if !it.set.is_valid() {
                return Err(Error::BadRequest("invalid version vector set".into()));
            }
        }
        // One key past its merge limit must not hold back the rest of the batch (a
        // handoff or repair would retry the same batch forever): refuse it alone.
        let mut refused = vec![];
        for (i, it) in items.into_iter().enumerate() {
            let merged = self.cfg.limits.check(&it.key, None).and_then(|()| self.check_homed(&it.key));
            match merged.and_then(|()| self.merge_in(&it.key, &it.set)) {
                Ok(_) => {}
                // Past the merge limit here, a key longer than this node takes (a
                // config that differs between nodes), or a state this node refuses
                // (naming an implausible counter of its actor): refused alone.
                Err(
                    e @ (Error::KeyFull { .. }
                    | Error::TooLarge { .. }
                    | Error::Protocol(_)
                    | Error::WrongLayout { .. }),
                ) => {
                    tracing::warn!(
                        key = %String::from_utf8_lossy(&it.key[..it.key.len().min(64)]),
                        "a batch item is refused: {e}"
                    );
                    refused.push(i as u32);
                }
                Err(e) => return Err(e),
            }
        }
        // Acked after a flush even when nothing changed: see `replica_put`.
        self.await_flush(req, refused, sync);
        Ok(None)
    }

    /// A stand-in takes a hint for `owner`, within its limits and the hint window.
    pub(super) fn take_hint(
        &mut self,
        req: ReqId,
        owner: NodeId,
        key: &[u8],
        set: &DvvSet,
    ) -> Result<Option<Response>, Error> {
        self.cfg.limits.check(key, None)?;
        if !set.is_valid() {
            return Err(Error::BadRequest("invalid version vector set".into()));
        }
        if owner == self.cfg.me || !self.is_member(owner) {
            return Err(Error::BadRequest(format!("node {owner} cannot own a hint held by node {}", self.cfg.me)));
        }
        if self.ring.preference_list(key).contains(&self.cfg.me) {
            // This node is itself a home replica of the key: keep it as data.
            return self.replica_put(req, key, set);
        }
        // A hint is for a home replica of the newest layout (one placed by an older
        // layout goes to one that is): its owner must be able to keep it.
        let owner = if self.ring.preference_list(key).contains(&owner) {
            owner
        } else {
            match self.ring.preference_list(key).iter().copied().find(|&h| h != self.cfg.me) {
                Some(h) => h,
                None => return self.replica_put(req, key, set),
            }
        };
        let me = self.cfg.me;
        let window = self.hints.limits().window_ms;
        if let Some(down) = self.down_for_ms(owner)
            && down > window
        {
            self.hints.refused += 1;
            let reason =
                format!("node {owner} has been down {} s, past the hint window of {} s", down / 1000, window / 1000);
            return Err(Error::HintRefused { node: me, reason });
        }
        let held = self.store.get_hint(owner, key)?;
        let before = replica::footprint(held.as_ref().map(|h| &h.set));
        let merged = match held {
            Some(h) => h.set.merged(set),
            None => set.clone(),
        };
        // A hint its owner could never merge would be refused there forever.
        if let Err(e) = self.cfg.limits.check_merged(before, &merged) {
            self.stats.key_merges_refused += 1;
            self.hints.refused += 1;
            return Err(Error::HintRefused { node: me, reason: e.to_string() });
        }
        let bytes = hint_bytes(key, merged.value_bytes());
        if let Err(reason) = self.hints.admit(owner, key, bytes) {
            self.hints.refused += 1;
            return Err(Error::HintRefused { node: me, reason });
        }
        // The hint's age restarts with each write it takes: expiring it by its first
        // write would drop a write acknowledged moments ago. Its older siblings stay
        // safe: a stand-in takes hints only within the hint window of the owner going
        // down, which the config keeps within the grace, and purge records outlive
        // two graces.
        let created_ms = self.wall_ms();
        self.store.put_hint(owner, key, &Hint { set: merged, created_ms })?;
        self.hints.record(owner, key, bytes, created_ms);
        self.await_flush(req, vec![], false);
        Ok(None)
    }

    /// A replica write of a key this node is no home replica of, in any layout in
    /// effect, is refused: it would be dropped with the range (the sender's layout is
    /// older or newer, and the answer says which).
    fn check_homed(&self, key: &[u8]) -> Result<(), Error> {
        if self.homes(key) {
            return Ok(());
        }
        Err(Error::WrongLayout {
            epoch: self.members.cluster.epoch(),
            reason: format!("node {} is not a home replica of this key", self.cfg.me),
        })
    }

    /// Ack `req` once a flush completes (`sync`: an fdatasync, whatever the persist
    /// policy); `refused`: a batch's items not merged.
    fn await_flush(&mut self, req: ReqId, refused: Vec<u32>, sync: bool) {
        if self.cfg.bugs().ack_before_flush && !sync {
            self.flush_unawaited();
            return self.reply(req, Ok(replica_ack(refused)));
        }
        let op = self.id();
        self.ops.insert(op, Op::ReplicaFlush { req, refused });
        if sync { self.flush_sync(op) } else { self.flush(op) }
    }
}

/// A replica's answer to a write it merged and flushed (a batch that refused
/// nothing answers as a single write does, which every version understands).
pub(super) fn replica_ack(refused: Vec<u32>) -> Response {
    if refused.is_empty() { Response::ReplicaAck } else { Response::ReplicaBatchAck { refused } }
}

/// What to send to target `t` of a write: the state, as a hint when `t` stands in for a home replica.
fn replica_write(state: &PutState, t: NodeId) -> Request {
    match state.placement.owners.get(&t) {
        Some(&owner) => Request::ReplicaHint { owner, key: state.key.clone(), set: state.set.clone() },
        None => Request::ReplicaPut { key: state.key.clone(), set: state.set.clone() },
    }
}
