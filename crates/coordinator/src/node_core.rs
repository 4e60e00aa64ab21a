//! A whole node's logic as one sans-IO state machine: client requests, replica
//! requests, forwarding, read repair, inspect, and liveness pings.
//!
//! [`Core`] owns the node's [`Store`] and talks to the world only through its
//! methods. The driver (`qkv-node` with tokio and quinn, or the simulator) must:
//!
//! 1. pass each incoming request to [`Core::handle_request`] with a fresh [`ReqId`];
//! 2. after every `handle_*` call, drain [`Core::poll_output`] and carry out each [`Output`]:
//!    - `Send`: deliver the request to that node and report its answer, or a failure,
//!      through [`Core::handle_response`]. The core fails the request itself after
//!      `timeout_ms`, so a lost answer never leaves work behind; a later report is ignored;
//!    - `Reply`: answer the request `req`;
//!    - `Flush`: make every store write so far durable under the node's persist
//!      policy, then call [`Core::handle_flushed`];
//! 3. call [`Core::handle_timeout`] whenever `now_ms` reaches [`Core::poll_timeout`].
//!
//! Time is `now_ms`, a monotonic millisecond count chosen by the driver.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use qkv_proto::{
    Context, DvvSet, Error, GetReply, GetRequest, InspectReply, MemberStatus, NodeId, PutReply,
    PutRequest, Request, Response, RingReply, StatusReply,
};
use tracing::{debug, info};

use crate::get::{GetAction, GetOp};
use crate::liveness::Liveness;
use crate::put::{PutOp, PutOutcome};
use crate::replica::{self, Limits};
use crate::ring::Ring;
use crate::route::{WriteRoute, check_available, route_write};

/// Identifies a request this node must answer (chosen by the driver).
pub type ReqId = u64;
/// Identifies a request this node sent (chosen by the core).
pub type RpcId = u64;

/// Longest per-request deadline a client may ask for.
pub const REQUEST_TIMEOUT_MS_MAX: u64 = 60_000;
/// Extra time a forwarding node waits beyond the request deadline for the coordinator.
pub const FORWARD_MARGIN_MS: u64 = 500;

/// The node's durable key → state map.
pub trait Store {
    /// The state of `key`, if any.
    fn get(&self, key: &[u8]) -> Result<Option<DvvSet>, Error>;
    /// Replace the state of `key`. Durable only after the next completed `Flush`.
    fn put(&mut self, key: &[u8], set: &DvvSet) -> Result<(), Error>;
}

/// What a node is and how it behaves.
#[derive(Clone, Debug)]
pub struct CoreConfig {
    /// This node.
    pub me: NodeId,
    /// Every member, this node included, with its address (shown in status; never dialled here).
    pub members: Vec<(NodeId, String)>,
    /// Replication factor.
    pub n: usize,
    /// Virtual nodes per member.
    pub vnodes: u32,
    /// Key and value limits.
    pub limits: Limits,
    /// Default request deadline.
    pub request_timeout_ms: u64,
    /// Ping period.
    pub ping_interval_ms: u64,
    /// Silence after which a peer is down.
    pub down_after_ms: u64,
}

/// An effect the driver must carry out. See the module docs.
#[derive(Clone, Debug, PartialEq)]
pub enum Output {
    /// Send `req` to `to`; answer with [`Core::handle_response`] within `timeout_ms`.
    Send {
        /// Echo this back.
        rpc: RpcId,
        /// The destination.
        to: NodeId,
        /// What to send.
        req: Request,
        /// The longest the driver may take to report an answer or a failure.
        timeout_ms: u64,
    },
    /// Answer request `req`.
    Reply {
        /// The request being answered.
        req: ReqId,
        /// The answer.
        resp: Response,
    },
    /// Make every write so far durable, then call [`Core::handle_flushed`] with `token`.
    Flush {
        /// Echo this back.
        token: u64,
    },
}

/// Counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Read repairs acknowledged by the stale replica.
    pub read_repairs: u64,
}

type OpId = u64;
/// One replica's raw state of a key, or why it could not be read.
type ReplicaRead = Result<Option<DvvSet>, Error>;

enum Op {
    /// A client read; outlives its answer to finish read repair.
    Get {
        req: Option<ReqId>,
        key: Vec<u8>,
        op: GetOp,
    },
    /// A client write, locally applied, waiting for its flush.
    PutFlush {
        req: ReqId,
        key: Vec<u8>,
        set: DvvSet,
        ctx: Context,
        home: Vec<NodeId>,
        needed: usize,
        timeout_ms: u64,
    },
    /// A client write being replicated.
    Put { req: ReqId, op: PutOp, ctx: Context },
    /// A write forwarded to its coordinator.
    Forward { req: ReqId },
    /// An incoming replica write, waiting for its flush.
    ReplicaFlush { req: ReqId },
    /// An inspect gathering each home replica's state.
    Inspect {
        req: ReqId,
        slots: Vec<(NodeId, Option<ReplicaRead>)>,
    },
    /// A read repair in flight.
    Repair { to: NodeId },
    /// A write still being sent to a replica after the client was answered.
    Replicate,
    /// A ping in flight.
    Ping { to: NodeId },
}

/// One node's logic. See the module docs for the driver contract.
pub struct Core<S> {
    cfg: CoreConfig,
    ring: Ring,
    liveness: Liveness,
    store: S,
    next_id: u64,
    ops: HashMap<OpId, Op>,
    rpcs: HashMap<RpcId, (OpId, NodeId, u64)>,
    rpc_deadlines: BTreeSet<(u64, RpcId)>,
    now_ms: u64,
    flushes: HashMap<u64, OpId>,
    deadlines: BTreeSet<(u64, OpId)>,
    out: VecDeque<Output>,
    next_ping_ms: u64,
    stats: Stats,
}

impl<S: Store> Core<S> {
    /// A node at time `now_ms`; every peer starts as up.
    pub fn new(cfg: CoreConfig, store: S, now_ms: u64) -> Result<Self, crate::RingError> {
        let ids: Vec<NodeId> = cfg.members.iter().map(|m| m.0).collect();
        let ring = Ring::new(&ids, cfg.vnodes, cfg.n)?;
        let peers = ids.into_iter().filter(|&m| m != cfg.me);
        let liveness = Liveness::new(peers, cfg.down_after_ms, now_ms);
        Ok(Core {
            cfg,
            ring,
            liveness,
            store,
            next_id: 1,
            ops: HashMap::new(),
            rpcs: HashMap::new(),
            rpc_deadlines: BTreeSet::new(),
            now_ms,
            flushes: HashMap::new(),
            deadlines: BTreeSet::new(),
            out: VecDeque::new(),
            next_ping_ms: now_ms,
            stats: Stats::default(),
        })
    }

    /// The store (for the driver's own reads, e.g. metrics).
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// The ring.
    pub fn ring(&self) -> &Ring {
        &self.ring
    }

    /// Whether `id` is up as this node sees it (itself always).
    pub fn is_up(&self, id: NodeId) -> bool {
        id == self.cfg.me || self.liveness.is_up(id)
    }

    /// The next effect to carry out.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// When [`Core::handle_timeout`] must next be called.
    #[must_use]
    pub fn poll_timeout(&self) -> u64 {
        let ops = self.deadlines.first().map_or(u64::MAX, |d| d.0);
        let rpcs = self.rpc_deadlines.first().map_or(u64::MAX, |d| d.0);
        ops.min(rpcs).min(self.next_ping_ms)
    }

    /// Time only moves forward, whatever the driver passes.
    fn tick(&mut self, now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn reply(&mut self, req: ReqId, resp: Result<Response, Error>) {
        self.out.push_back(Output::Reply {
            req,
            resp: resp.unwrap_or_else(Response::Error),
        });
    }

    fn send(&mut self, op: OpId, to: NodeId, req: Request, timeout_ms: u64) {
        let rpc = self.id();
        let deadline = self.now_ms + timeout_ms;
        self.rpcs.insert(rpc, (op, to, deadline));
        self.rpc_deadlines.insert((deadline, rpc));
        self.out.push_back(Output::Send {
            rpc,
            to,
            req,
            timeout_ms,
        });
    }

    fn flush(&mut self, op: OpId) {
        let token = self.id();
        self.flushes.insert(token, op);
        self.out.push_back(Output::Flush { token });
    }

    fn timeout_ms(&self, asked: Option<u32>) -> Result<u64, Error> {
        match asked {
            None => Ok(self.cfg.request_timeout_ms),
            Some(0) => Err(Error::BadRequest("timeout must be positive".into())),
            Some(t) if u64::from(t) > REQUEST_TIMEOUT_MS_MAX => Err(Error::BadRequest(format!(
                "timeout {t} ms is over the limit of {REQUEST_TIMEOUT_MS_MAX} ms"
            ))),
            Some(t) => Ok(u64::from(t)),
        }
    }

    /// A request arrived (already authorised by the driver).
    pub fn handle_request(&mut self, now_ms: u64, req_id: ReqId, req: Request) {
        self.tick(now_ms);
        let immediate = match req {
            Request::Get(g) => self.start_get(now_ms, req_id, g),
            Request::Put(p) => self.start_put(req_id, p),
            Request::Inspect { key } => self.start_inspect(req_id, key),
            Request::Status => Ok(Some(Response::Status(self.status()))),
            Request::Ring { key } => self.ring_reply(&key).map(|r| Some(Response::Ring(r))),
            Request::ReplicaGet { key } => self
                .cfg
                .limits
                .check(&key, None)
                .and_then(|_| self.store.get(&key))
                .map(|s| Some(Response::ReplicaState(s))),
            Request::ReplicaPut { key, set } => self.replica_put(req_id, &key, &set),
            Request::Ping { .. } => Ok(Some(Response::Pong { from: self.cfg.me })),
            _ => Err(Error::BadRequest("unsupported request".into())),
        };
        match immediate {
            Ok(Some(resp)) => self.reply(req_id, Ok(resp)),
            Ok(None) => {}
            Err(e) => self.reply(req_id, Err(e)),
        }
    }

    /// Merge an incoming replica write; the ack waits for the flush when the state changed.
    fn replica_put(
        &mut self,
        req: ReqId,
        key: &[u8],
        set: &DvvSet,
    ) -> Result<Option<Response>, Error> {
        self.cfg.limits.check(key, None)?;
        match replica::merge(self.store.get(key)?, set)? {
            None => Ok(Some(Response::ReplicaAck)),
            Some(new) => {
                self.store.put(key, &new)?;
                let op = self.id();
                self.ops.insert(op, Op::ReplicaFlush { req });
                self.flush(op);
                Ok(None)
            }
        }
    }

    fn start_get(
        &mut self,
        now_ms: u64,
        req: ReqId,
        g: GetRequest,
    ) -> Result<Option<Response>, Error> {
        self.cfg.limits.check(&g.key, None)?;
        let timeout_ms = self.timeout_ms(g.timeout_ms)?;
        let home = self.ring.preference_list(&g.key).to_vec();
        let alive = home.iter().filter(|&&n| self.is_up(n)).count();
        let needed = check_available(g.r, self.ring.n(), alive)?;
        let op_id = self.id();
        let get = GetOp::new(home.clone(), needed, now_ms, timeout_ms);
        self.deadlines.insert((get.deadline_ms(), op_id));
        self.ops.insert(
            op_id,
            Op::Get {
                req: Some(req),
                key: g.key.clone(),
                op: get,
            },
        );
        for t in home {
            if t == self.cfg.me {
                let local = self.store.get(&g.key);
                self.get_event(op_id, t, local);
            } else {
                self.send(
                    op_id,
                    t,
                    Request::ReplicaGet { key: g.key.clone() },
                    timeout_ms,
                );
            }
        }
        Ok(None)
    }

    fn get_event(&mut self, op_id: OpId, from: NodeId, r: Result<Option<DvvSet>, Error>) {
        let Some(Op::Get { op, .. }) = self.ops.get_mut(&op_id) else {
            return;
        };
        let actions = match r {
            Ok(state) => op.on_reply(from, state),
            Err(e) => op.on_failure(from, e),
        };
        self.get_actions(op_id, actions);
    }

    fn get_actions(&mut self, op_id: OpId, actions: Vec<GetAction>) {
        let Some(Op::Get { req, key, op }) = self.ops.get_mut(&op_id) else {
            return;
        };
        let answering = actions.iter().any(|a| matches!(a, GetAction::Reply(_)));
        let req = if answering { req.take() } else { None };
        let (key, finished, deadline) = (key.clone(), op.is_finished(), op.deadline_ms());
        let mut reply = None;
        for a in actions {
            match a {
                GetAction::Reply(r) => reply = req.map(|req| (req, r)),
                GetAction::Repair { to, set } => {
                    if to == self.cfg.me {
                        let changed = self
                            .store
                            .get(&key)
                            .and_then(|l| replica::merge(l, &set))
                            .and_then(|new| {
                                new.map(|s| self.store.put(&key, &s))
                                    .transpose()
                                    .map(|w| w.is_some())
                            });
                        match changed {
                            Ok(true) => self.stats.read_repairs += 1,
                            Ok(false) => {}
                            Err(e) => debug!("local read repair failed: {e}"),
                        }
                    } else {
                        let rep = self.id();
                        self.ops.insert(rep, Op::Repair { to });
                        let timeout_ms = self.cfg.request_timeout_ms;
                        self.send(
                            rep,
                            to,
                            Request::ReplicaPut {
                                key: key.clone(),
                                set,
                            },
                            timeout_ms,
                        );
                    }
                }
            }
        }
        if let Some((req, r)) = reply {
            let resp = r.map(|a| {
                Response::Get(GetReply {
                    found: !a.set.is_deleted(),
                    values: a
                        .set
                        .values()
                        .map(|v| serde_bytes::ByteBuf::from(v.to_vec()))
                        .collect(),
                    context: Context(a.set.clock().clone()),
                    replied: a.replied as u32,
                })
            });
            self.reply(req, resp);
        }
        if finished {
            self.deadlines.remove(&(deadline, op_id));
            self.ops.remove(&op_id);
        }
    }

    fn start_put(&mut self, req: ReqId, p: PutRequest) -> Result<Option<Response>, Error> {
        self.cfg.limits.check(&p.key, p.value.as_deref())?;
        let timeout_ms = self.timeout_ms(p.timeout_ms)?;
        let n = self.ring.n();
        p.w.required(n)?;
        let home = self.ring.preference_list(&p.key).to_vec();
        let me = self.cfg.me;
        match route_write(&home, me, p.forwarded, |id| self.is_up(id))? {
            WriteRoute::Forward(to) => {
                let op = self.id();
                self.ops.insert(op, Op::Forward { req });
                self.send(
                    op,
                    to,
                    Request::Put(PutRequest {
                        forwarded: true,
                        ..p
                    }),
                    timeout_ms + FORWARD_MARGIN_MS,
                );
                return Ok(None);
            }
            WriteRoute::Local => {}
        }
        let alive = home.iter().filter(|&&id| self.is_up(id)).count();
        let needed = check_available(p.w, n, alive)?;
        let (set, ctx) = replica::coordinate(self.store.get(&p.key)?, &p.context, p.value, me);
        self.store.put(&p.key, &set)?;
        let op = self.id();
        self.ops.insert(
            op,
            Op::PutFlush {
                req,
                key: p.key,
                set,
                ctx,
                home,
                needed,
                timeout_ms,
            },
        );
        self.flush(op);
        Ok(None)
    }

    /// The driver finished a `Flush`: writes made before it are durable.
    pub fn handle_flushed(&mut self, now_ms: u64, token: u64, result: Result<(), Error>) {
        self.tick(now_ms);
        let Some(op_id) = self.flushes.remove(&token) else {
            return;
        };
        match self.ops.remove(&op_id) {
            Some(Op::ReplicaFlush { req }) => self.reply(req, result.map(|_| Response::ReplicaAck)),
            Some(Op::PutFlush {
                req,
                key,
                set,
                ctx,
                home,
                needed,
                timeout_ms,
            }) => {
                if let Err(e) = result {
                    return self.reply(req, Err(e));
                }
                let mut op = PutOp::new(self.cfg.me, home, needed, now_ms, timeout_ms);
                let targets: Vec<NodeId> = op.remote_targets().collect();
                if let Some(outcome) = op.poll() {
                    // Answer now; the other replicas still get the write.
                    self.put_answer(req, &ctx, outcome);
                    for t in targets {
                        let rep = self.id();
                        self.ops.insert(rep, Op::Replicate);
                        self.send(
                            rep,
                            t,
                            Request::ReplicaPut {
                                key: key.clone(),
                                set: set.clone(),
                            },
                            timeout_ms,
                        );
                    }
                    return;
                }
                self.deadlines.insert((op.deadline_ms(), op_id));
                self.ops.insert(op_id, Op::Put { req, op, ctx });
                for t in targets {
                    self.send(
                        op_id,
                        t,
                        Request::ReplicaPut {
                            key: key.clone(),
                            set: set.clone(),
                        },
                        timeout_ms,
                    );
                }
            }
            Some(other) => {
                self.ops.insert(op_id, other);
            }
            None => {}
        }
    }

    fn put_answer(&mut self, req: ReqId, ctx: &Context, outcome: PutOutcome) {
        let me = self.cfg.me;
        let resp = outcome.map(|acked| {
            Response::Put(PutReply {
                context: ctx.clone(),
                home_acks: acked,
                coordinator: me,
            })
        });
        self.reply(req, resp);
    }

    fn put_event(&mut self, op_id: OpId, from: NodeId, r: Result<(), Error>) {
        let Some(Op::Put { op, .. }) = self.ops.get_mut(&op_id) else {
            return;
        };
        let deadline = op.deadline_ms();
        let outcome = match r {
            Ok(()) => op.on_ack(from),
            Err(e) => op.on_failure(from, e),
        };
        if let Some(outcome) = outcome {
            self.deadlines.remove(&(deadline, op_id));
            if let Some(Op::Put { req, ctx, .. }) = self.ops.remove(&op_id) {
                self.put_answer(req, &ctx, outcome);
            }
        }
    }

    fn start_inspect(&mut self, req: ReqId, key: Vec<u8>) -> Result<Option<Response>, Error> {
        self.cfg.limits.check(&key, None)?;
        let home = self.ring.preference_list(&key).to_vec();
        let op = self.id();
        let slots = home
            .iter()
            .map(|&id| (id, (id == self.cfg.me).then(|| self.store.get(&key))))
            .collect();
        self.ops.insert(op, Op::Inspect { req, slots });
        let (me, timeout_ms) = (self.cfg.me, self.cfg.request_timeout_ms);
        for id in home.into_iter().filter(|&id| id != me) {
            self.send(op, id, Request::ReplicaGet { key: key.clone() }, timeout_ms);
        }
        self.inspect_done(op);
        Ok(None)
    }

    fn inspect_done(&mut self, op: OpId) {
        let Some(Op::Inspect { slots, .. }) = self.ops.get(&op) else {
            return;
        };
        if slots.iter().all(|s| s.1.is_some())
            && let Some(Op::Inspect { req, slots }) = self.ops.remove(&op)
        {
            let replicas = slots
                .into_iter()
                .map(|(id, r)| (id, r.expect("all slots are filled")))
                .collect();
            self.reply(req, Ok(Response::Inspect(InspectReply { replicas })));
        }
    }

    /// The answer to (or failure of) a request this node sent.
    pub fn handle_response(&mut self, now_ms: u64, rpc: RpcId, result: Result<Response, Error>) {
        self.tick(now_ms);
        let Some((op_id, to, deadline)) = self.rpcs.remove(&rpc) else {
            return;
        };
        self.rpc_deadlines.remove(&(deadline, rpc));
        let from = to;
        if result.is_ok() {
            self.liveness.on_success(from, now_ms);
        }
        // A node's own error answer is a failure of that replica.
        let result = match result {
            Ok(Response::Error(e)) => Err(e),
            other => other,
        };
        match self.ops.get(&op_id) {
            Some(Op::Get { .. }) => {
                let state = result.and_then(|r| match r {
                    Response::ReplicaState(s) if s.as_ref().is_none_or(DvvSet::is_valid) => Ok(s),
                    other => Err(unexpected(from, &other)),
                });
                self.get_event(op_id, from, state);
            }
            Some(Op::Put { .. }) => {
                let ack = result.and_then(|r| match r {
                    Response::ReplicaAck => Ok(()),
                    other => Err(unexpected(from, &other)),
                });
                self.put_event(op_id, from, ack);
            }
            Some(Op::Forward { .. }) => {
                let Some(Op::Forward { req }) = self.ops.remove(&op_id) else {
                    return;
                };
                let resp = match result {
                    Ok(r @ Response::Put(_)) => Ok(r),
                    Ok(other) => Err(unexpected(from, &other)),
                    Err(e @ Error::Unreachable(_)) => Err(Error::Unreachable(format!(
                        "forwarding to coordinator node {from}: {e}"
                    ))),
                    Err(e) => Err(e),
                };
                self.reply(req, resp);
            }
            Some(Op::Inspect { .. }) => {
                if let Some(Op::Inspect { slots, .. }) = self.ops.get_mut(&op_id) {
                    let state = result.and_then(|r| match r {
                        Response::ReplicaState(s) => Ok(s),
                        other => Err(unexpected(from, &other)),
                    });
                    if let Some(slot) = slots.iter_mut().find(|s| s.0 == from && s.1.is_none()) {
                        slot.1 = Some(state);
                    }
                }
                self.inspect_done(op_id);
            }
            Some(Op::Repair { to }) => {
                let to = *to;
                self.ops.remove(&op_id);
                if matches!(result, Ok(Response::ReplicaAck)) {
                    self.stats.read_repairs += 1;
                    debug!(to, "read repair");
                }
            }
            Some(Op::Ping { to }) => {
                let to = *to;
                self.ops.remove(&op_id);
                let was_up = self.liveness.is_up(to);
                if matches!(result, Ok(Response::Pong { from }) if from == to) {
                    self.liveness.on_success(to, now_ms);
                } else {
                    self.liveness.on_failure(to);
                }
                if was_up != self.liveness.is_up(to) {
                    info!(peer = to, up = !was_up, "peer liveness changed");
                }
            }
            Some(Op::Replicate) => {
                self.ops.remove(&op_id);
            }
            Some(Op::PutFlush { .. } | Op::ReplicaFlush { .. }) | None => {}
        }
    }

    /// Time passed: fire deadlines and pings.
    pub fn handle_timeout(&mut self, now_ms: u64) {
        self.tick(now_ms);
        while let Some(&(at, op_id)) = self.deadlines.first() {
            if at > now_ms {
                break;
            }
            self.deadlines.remove(&(at, op_id));
            match self.ops.get_mut(&op_id) {
                Some(Op::Get { op, .. }) => {
                    // At its deadline a read answers (if it has not) and plans its repairs: it is finished.
                    let actions = op.on_timeout(now_ms);
                    self.get_actions(op_id, actions);
                }
                Some(Op::Put { op, .. }) => {
                    let outcome = op.on_timeout(now_ms);
                    if let (Some(outcome), Some(Op::Put { req, ctx, .. })) =
                        (outcome, self.ops.remove(&op_id))
                    {
                        self.put_answer(req, &ctx, outcome);
                    }
                }
                _ => {}
            }
        }
        // After the ops' own deadlines, so an op due now answers "timeout", not "failed".
        while let Some(&(at, rpc)) = self.rpc_deadlines.first() {
            if at > now_ms {
                break;
            }
            let to = self.rpcs.get(&rpc).map_or(0, |r| r.1);
            self.handle_response(
                now_ms,
                rpc,
                Err(Error::Unreachable(format!(
                    "node {to} did not answer in time"
                ))),
            );
        }
        if now_ms >= self.next_ping_ms {
            self.next_ping_ms = now_ms + self.cfg.ping_interval_ms;
            let peers: Vec<NodeId> = self
                .cfg
                .members
                .iter()
                .map(|m| m.0)
                .filter(|&m| m != self.cfg.me)
                .collect();
            for to in peers {
                let op = self.id();
                self.ops.insert(op, Op::Ping { to });
                let timeout_ms = self.cfg.ping_interval_ms * 2;
                self.send(op, to, Request::Ping { from: self.cfg.me }, timeout_ms);
            }
            for p in self.liveness.tick(now_ms) {
                info!(peer = p, "peer silent: marked down");
            }
        }
    }

    /// This node's view of the cluster.
    pub fn status(&self) -> StatusReply {
        let own = self.ring.ownership();
        StatusReply {
            node: self.cfg.me,
            n: self.ring.n() as u32,
            vnodes: self.ring.vnodes(),
            members: self
                .cfg
                .members
                .iter()
                .map(|(id, addr)| MemberStatus {
                    node: *id,
                    addr: addr.clone(),
                    up: self.is_up(*id),
                    ownership: own.get(id).copied().unwrap_or(0.0),
                })
                .collect(),
            read_repairs: self.stats.read_repairs,
        }
    }

    fn ring_reply(&self, key: &[u8]) -> Result<RingReply, Error> {
        self.cfg.limits.check(key, None)?;
        let addr = |id: NodeId| {
            self.cfg
                .members
                .iter()
                .find(|m| m.0 == id)
                .map(|m| m.1.clone())
                .unwrap_or_default()
        };
        Ok(RingReply {
            replicas: self
                .ring
                .preference_list(key)
                .iter()
                .map(|&id| (id, addr(id)))
                .collect(),
        })
    }

    /// Ops in flight (for tests and metrics): bounded by requests in flight times N.
    pub fn ops_in_flight(&self) -> usize {
        self.ops.len()
    }

    /// Each member and whether this node sees it up.
    pub fn members(&self) -> BTreeMap<NodeId, bool> {
        self.cfg
            .members
            .iter()
            .map(|m| (m.0, self.is_up(m.0)))
            .collect()
    }
}

fn unexpected(from: NodeId, r: &Response) -> Error {
    Error::BadRequest(format!("node {from} sent an unexpected answer: {r:?}"))
}
