//! Reads: strict (home replicas only) or sloppy (the first N up nodes of the
//! key's walk, where a stand-in answers from the hints it holds), read repair of
//! home replicas, and inspect.

use qkv_proto::{Context, DvvSet, Error, GetReply, GetRequest, NodeId, Request, Response, Secret};

use super::{Core, Op, OpId, READ_CHECK_EVERY, ReqId, Store, unexpected};
use crate::get::{GetAction, GetOp};
use crate::inspect::InspectOp;
use crate::placement;
use crate::route::check_available;

impl<S: Store> Core<S> {
    /// This node's state of `key`: its data when it is a home replica, else the
    /// merge of the hints it holds for the key.
    pub(super) fn replica_get(&self, key: &[u8]) -> Result<Option<DvvSet>, Error> {
        self.cfg.limits.check(key, None)?;
        if self.homes(key) {
            return self.store.get(key);
        }
        Ok(self.hints_for(key)?.into_iter().map(|(_, set, _)| set).reduce(|acc, s| acc.merged(&s)))
    }

    /// The hints this node holds for `key`: (owner, state, age ms).
    pub(super) fn hints_for(&self, key: &[u8]) -> Result<Vec<(NodeId, DvvSet, u64)>, Error> {
        self.cfg.limits.check(key, None)?;
        let mut out = vec![];
        for owner in self.hints.owners_of(key) {
            if let Some(h) = self.store.get_hint(owner, key)? {
                out.push((owner, h.set, self.wall_ms().saturating_sub(h.created_ms)));
            }
        }
        Ok(out)
    }

    pub(super) fn start_get(&mut self, req: ReqId, g: GetRequest) -> Result<Option<Response>, Error> {
        self.cfg.limits.check(&g.key, None)?;
        // A session's floor is untrusted input: a forged one would have the read wait
        // for writes that never were.
        let floor = match &g.session {
            Some(f) => Some((f.context.verify(&self.cfg.secret, &g.key)?.clone(), f.deleted)),
            None => None,
        };
        let timeout_ms = self.timeout_ms(g.timeout_ms)?;
        let ring = self.read_ring();
        let n = ring.n();
        let home = ring.preference_list(&g.key).to_vec();
        let me = self.cfg.me;
        let (mut targets, alive) = placement::read_targets(ring.walk(&g.key), n, g.strict, |id| self.is_up(id));
        let needed = check_available(g.r, n, alive)?;
        // A node that has not heard a peer's view since it started may have been
        // forgotten while it was down, its copies older than what the cluster acked and
        // purged since: until it knows, it does not count its own copy when the other
        // replicas up can make R. (When they cannot, it reads every one of them and
        // itself.)
        if self.quiet() && targets.iter().filter(|&&t| t != me && self.is_up(t)).count() >= needed {
            targets.retain(|&t| t != me);
        }
        // The coordinator's own copy first (an R = one read is then one local lookup),
        // then the targets up before those down (a strict read's home replicas include
        // those down), each in the walk's order.
        targets.sort_by_key(|&t| (t != me, !self.is_up(t)));
        // A sample of the reads that ask fewer than every target checks the others'
        // digests in the background (see `GetOp`).
        self.reads_started = self.reads_started.wrapping_add(1);
        let check = needed < targets.len() && self.reads_started.is_multiple_of(READ_CHECK_EVERY);
        let op_id = self.id();
        let mut get = GetOp::new(&g.key, targets, needed, self.now_ms, timeout_ms, check);
        if let Some((seen, deleted)) = floor {
            get = get.with_floor(seen, deleted);
        }
        let first = get.start(self.now_ms);
        let wake_ms = get.next_wakeup_ms();
        self.deadlines.insert((wake_ms, op_id));
        self.ops.insert(op_id, Op::Get { req: Some(req), op: get, home, wake_ms });
        self.get_actions(op_id, first);
        Ok(None)
    }

    pub(super) fn get_response(&mut self, op_id: OpId, from: NodeId, result: Result<Response, Error>) {
        let Some(Op::Get { op, .. }) = self.ops.get_mut(&op_id) else { return };
        let actions = answered(op, from, result);
        self.get_actions(op_id, actions);
    }

    pub(super) fn get_deadline(&mut self, op_id: OpId) {
        let now = self.now_ms;
        let Some(Op::Get { op, .. }) = self.ops.get_mut(&op_id) else { return };
        // At its deadline a read answers (if it has not) and plans its repairs: it is
        // finished. Before it, a hedge asks one more replica.
        let actions = op.on_timeout(now);
        self.get_actions(op_id, actions);
    }

    /// This node's digest of its state of `key` (a checked read asks it).
    pub(super) fn replica_digest(&self, key: &[u8]) -> Result<u64, Error> {
        Ok(crate::merkle::digest(key, &self.replica_get(key)?.unwrap_or_default()))
    }

    fn get_actions(&mut self, op_id: OpId, actions: Vec<GetAction>) {
        let mut pending = std::collections::VecDeque::from(actions);
        while let Some(a) = pending.pop_front() {
            let Some(Op::Get { req, op, home, .. }) = self.ops.get_mut(&op_id) else { return };
            let key = op.key().to_vec();
            match a {
                GetAction::Reply(r) => {
                    if let Some(req) = req.take() {
                        let limits = &self.cfg.limits;
                        let r = r.and_then(|a| {
                            limits.check_reply(&a.set, a.replied)?;
                            Ok(Response::Get(get_reply(&self.cfg.secret, &key, &a.set, a.replied)))
                        });
                        self.reply(req, r);
                    }
                }
                GetAction::Ask { to } => self.get_ask(op_id, to, Request::ReplicaGet { key }, &mut pending),
                GetAction::AskDigest { to } => self.get_ask(op_id, to, Request::ReplicaDigest { key }, &mut pending),
                // Only home replicas are repaired; a stand-in's hints go home by handoff.
                GetAction::Repair { to, .. } if !home.contains(&to) => {}
                // A merge no replica could take (it was refused as the answer too) is not sent.
                GetAction::Repair { set, .. } if !self.cfg.limits.fits_reply(&set) => {}
                GetAction::Repair { to, set } if to == self.cfg.me => self.repair_locally(&key, &set),
                GetAction::Repair { to, set } => {
                    let rep = self.id();
                    self.ops.insert(rep, Op::Repair);
                    let timeout_ms = self.cfg.request_timeout_ms;
                    self.send(rep, to, Request::ReplicaPut { key, set }, timeout_ms);
                }
            }
        }
        // Re-arm its timer, or retire it.
        let now = self.now_ms;
        let Some(Op::Get { op, wake_ms, .. }) = self.ops.get_mut(&op_id) else { return };
        let (finished, old_wake, new_wake) = (op.is_finished(), *wake_ms, op.next_wakeup_ms().max(now));
        let checked = if finished { op.check_outcome() } else { None };
        if finished {
            self.deadlines.remove(&(old_wake, op_id));
            self.ops.remove(&op_id);
        } else if new_wake != old_wake {
            *wake_ms = new_wake;
            self.deadlines.remove(&(old_wake, op_id));
            self.deadlines.insert((new_wake, op_id));
        }
        if let Some(c) = checked {
            self.stats.read_checks += 1;
            self.stats.read_checks_differed += u64::from(c.differed > 0);
        }
    }

    /// Send a read's request (`ReplicaGet` or `ReplicaDigest`) to `to`; this node's own
    /// copy answers at once, and what that answer sets off joins `pending`.
    fn get_ask(&mut self, op_id: OpId, to: NodeId, ask: Request, pending: &mut std::collections::VecDeque<GetAction>) {
        if to != self.cfg.me {
            let timeout_ms = self.get_timeout(op_id);
            return self.send(op_id, to, ask, timeout_ms);
        }
        let answer = match &ask {
            Request::ReplicaDigest { key } => self.replica_digest(key).map(Response::Digest),
            Request::ReplicaGet { key } => self.replica_get(key).map(Response::ReplicaState),
            _ => return,
        };
        if let Some(Op::Get { op, .. }) = self.ops.get_mut(&op_id) {
            pending.extend(answered(op, to, answer));
        }
    }

    /// What is left of a read's deadline, for one more request of it.
    fn get_timeout(&self, op_id: OpId) -> u64 {
        match self.ops.get(&op_id) {
            Some(Op::Get { op, .. }) => op.deadline_ms().saturating_sub(self.now_ms).max(1),
            _ => self.cfg.request_timeout_ms,
        }
    }

    fn repair_locally(&mut self, key: &[u8], set: &DvvSet) {
        match self.merge_in(key, set) {
            Ok(true) => self.stats.read_repairs += 1,
            Ok(false) => {}
            Err(e) => tracing::debug!("local read repair failed: {e}"),
        }
    }

    pub(super) fn start_inspect(&mut self, req: ReqId, key: Vec<u8>) -> Result<Option<Response>, Error> {
        self.cfg.limits.check(&key, None)?;
        let walk = self.read_ring().walk(&key).to_vec();
        let n = self.ring.n();
        let (me, timeout_ms) = (self.cfg.me, self.cfg.request_timeout_ms);
        let op = self.id();
        let local_hints = if walk[n..].contains(&me) { self.hints_for(&key)? } else { vec![] };
        let store = &self.store;
        let inspect = InspectOp::new(me, &walk[..n], &walk[n..], || store.get(&key), local_hints);
        let (replicas, stand_ins) = (inspect.replicas_to_ask(me), inspect.stand_ins_to_ask());
        let deadline_ms = self.now_ms + timeout_ms;
        self.deadlines.insert((deadline_ms, op));
        self.ops.insert(op, Op::Inspect { req, inspect, deadline_ms });
        for id in replicas {
            self.send(op, id, Request::ReplicaGet { key: key.clone() }, timeout_ms);
        }
        for id in stand_ins {
            self.send(op, id, Request::HintGet { key: key.clone() }, timeout_ms);
        }
        self.inspect_done(op);
        Ok(None)
    }

    pub(super) fn inspect_response(&mut self, op_id: OpId, from: NodeId, result: Result<Response, Error>) {
        let Some(Op::Inspect { inspect, .. }) = self.ops.get_mut(&op_id) else { return };
        inspect.on_answer(from, result);
        self.inspect_done(op_id);
    }

    /// At its deadline an inspect answers with what it has.
    pub(super) fn inspect_deadline(&mut self, op_id: OpId) {
        let Some(Op::Inspect { inspect, .. }) = self.ops.get_mut(&op_id) else { return };
        inspect.expire();
        self.inspect_done(op_id);
    }

    fn inspect_done(&mut self, op: OpId) {
        let Some(Op::Inspect { inspect, .. }) = self.ops.get(&op) else { return };
        if inspect.is_done()
            && let Some(Op::Inspect { req, inspect, deadline_ms }) = self.ops.remove(&op)
        {
            self.deadlines.remove(&(deadline_ms, op));
            self.reply(req, Ok(Response::Inspect(inspect.reply())));
        }
    }
}

/// What a replica's answer to a read's request (its state, its digest, or why neither
/// came) sets off.
fn answered(op: &mut GetOp, from: NodeId, answer: Result<Response, Error>) -> Vec<GetAction> {
    match answer {
        Ok(Response::ReplicaState(s)) if s.as_ref().is_none_or(DvvSet::is_valid) => op.on_reply(from, s),
        Ok(Response::Digest(d)) => op.on_digest(from, d),
        Ok(other) => op.on_failure(from, unexpected(from, &other)),
        Err(e) => op.on_failure(from, e),
    }
}

fn get_reply(secret: &Secret, key: &[u8], set: &DvvSet, replied: usize) -> GetReply {
    GetReply {
        found: !set.is_deleted(),
        values: set.values().map(|v| serde_bytes::ByteBuf::from(v.to_vec())).collect(),
        context: Context::issue(secret, key, set.seen()),
        replied: replied as u32,
    }
}
