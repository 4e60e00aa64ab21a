//! A whole node's logic as one sans-IO state machine: client requests, replica
//! requests, forwarding, sloppy quorums with hints, hinted handoff, read repair,
//! inspect, and failure detection by gossiped heartbeats.
//!
//! [`Core`] owns the node's [`Store`] and talks to the world only through its
//! methods. The driver (`qkv-server` with tokio and quinn, or the simulator) must:
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
//! Time is `now_ms`, a monotonic millisecond count chosen by the driver. Wall-clock
//! time is used only to date hints for display: `wall_ms - now_ms` is fixed at start.
//!
//! # Layout
//! - this file: state, dispatch, timers, the tables of operations in flight.
//! - `local.rs`: the local write and merge, the counter lease.
//! - `invariants.rs`: what is asserted of every state that leaves the core, and table bounds.
//! - `interface.rs`: the config, the [`Store`] trait, [`Output`], ids and timing constants.
//! - `report.rs`: what the node reports of itself ([`Report`]) and a key's placement.
//! - `recent.rs`: recent write ids (retries answered without a second write).
//! - `read.rs`: gets (strict and sloppy), read repair, and drives inspects ([`crate::inspect`]).
//! - `write.rs`: puts, forwarding, stand-in selection, replica writes, hint intake.
//! - `handoff.rs`: drives [`crate::handoff`] (hints pushed to their owners).
//! - `gossip.rs`: pings and the failure detector.
//! - `probes.rs`: the lag tracker's probes ([`crate::lag`]).
//! - `antientropy.rs`: drives [`crate::antientropy`] (its timers, its exchange, a peer's comparisons).
//! - `membership.rs`: drives [`crate::membership`]: layouts, their spread and commit, transfers.

mod antientropy;
mod gossip;
mod handoff;
mod interface;
mod invariants;
mod local;
mod membership;
mod probes;
mod read;
mod recent;
mod report;
mod write;

use std::collections::{BTreeSet, HashMap, VecDeque};

use qkv_proto::{Actor, Context, Dot, DvvSet, Error, NodeId, Request, Response};

use crate::antientropy::AntiEntropy;
use crate::get::GetOp;
use crate::hints::HintIndex;
use crate::lag::LagTracker;
use crate::liveness::Detector;
use crate::placement::WriteTargets;
use crate::put::PutOp;
use crate::ring::Ring;
use recent::RecentWrites;

pub use crate::antientropy::AaeConfig;

pub use interface::*;
pub use report::{HintsReport, MemberReport, Report};

type OpId = u64;

/// A client write applied locally, not yet sent to the other replicas.
struct PendingPut {
    req: ReqId,
    key: Vec<u8>,
    set: DvvSet,
    ctx: Context,
    /// A session write's new floor (see `PutReply::session`).
    session: Option<Context>,
    dot: Dot,
    needed: usize,
    timeout_ms: u64,
    strict: bool,
}

/// A write being replicated: home replicas, and stand-ins for those that are down.
struct PutState {
    req: ReqId,
    op: PutOp,
    ctx: Context,
    session: Option<Context>,
    dot: Dot,
    key: Vec<u8>,
    set: DvvSet,
    home: Vec<NodeId>,
    /// Targets, the stand-ins among them (and whom for), and the spare candidates.
    placement: WriteTargets,
    sloppy: bool,
    /// The layout epoch it was placed by.
    epoch: u64,
}

enum Op {
    /// A client read; outlives its answer to finish read repair. `wake_ms`: when its
    /// timer is set (its next hedge, or its deadline).
    Get { req: Option<ReqId>, op: GetOp, home: Vec<NodeId>, wake_ms: u64 },
    /// A client write, locally applied, waiting for its flush.
    PutFlush(PendingPut),
    /// A client write being replicated.
    Put(Box<PutState>),
    /// A write forwarded to its coordinator.
    Forward { req: ReqId },
    /// An incoming replica write or hint, waiting for its flush.
    ReplicaFlush {
        req: ReqId,
        /// A batch's items refused (answered with `ReplicaBatchAck` when any).
        refused: Vec<u32>,
    },
    /// An inspect ([`crate::inspect`]), answered at its end or at `deadline_ms`.
    Inspect { req: ReqId, inspect: crate::inspect::InspectOp, deadline_ms: u64 },
    /// A read repair in flight.
    Repair,
    /// A ping in flight.
    Ping { to: NodeId },
    /// A batch of hints in flight (its state is in `Core::handoff`).
    Handoff,
    /// A batch of a dropped range's keys on its way to their home replicas.
    DropHandoff,
    /// The anti-entropy exchange this node started (its state is in `Core::aae`).
    Aae,
    /// An answered write whose remaining replica acks still count for its lag.
    PutTail { track: Option<u64>, outstanding: usize },
    /// Asking a replica whether it holds a tracked write yet.
    LagProbe { track: u64, node: NodeId },
    /// Asking a peer for its cluster layout.
    LayoutFetch,
    /// Telling a peer this node's cluster layout.
    LayoutPush { to: NodeId, epoch: u64 },
    /// Committing the staged changes: this node's round of votes.
    Commit { req: ReqId, round: Box<crate::membership::Round> },
    /// A vote or a layout answer waiting for its sync: the answer to `req`, or this
    /// node's own vote in its round `vote.0`.
    MetaReply { req: Option<ReqId>, vote: Option<(OpId, crate::membership::Vote)>, resp: Response },
    /// A page of transfer `job` of epoch `epoch` in flight.
    Fetch { job: usize, epoch: u64 },
    /// A page merged, waiting for its flush.
    FetchFlush { job: usize, epoch: u64, keys: u64, bytes: u64, next: Option<(u64, Vec<u8>)> },
}

/// One node's logic. See the module docs for the driver contract.
pub struct Core<S> {
    cfg: CoreConfig,
    ring: Ring,
    detector: Detector,
    hints: HintIndex,
    handoff: crate::handoff::Handoff,
    store: S,
    next_id: u64,
    ops: HashMap<OpId, Op>,
    rpcs: HashMap<RpcId, (OpId, NodeId, u64)>,
    rpc_deadlines: BTreeSet<(u64, RpcId)>,
    flushes: HashMap<u64, OpId>,
    deadlines: BTreeSet<(u64, OpId)>,
    out: VecDeque<Output>,
    now_ms: u64,
    wall_offset_ms: u64,
    next_ping_ms: u64,
    next_handoff_ms: u64,
    stats: Stats,
    lag: LagTracker,
    aae: AntiEntropy,
    actor: Actor,
    /// The highest counter this node's actor minted, and the recorded lease above it.
    counter: u64,
    counter_lease: u64,
    /// The lease known to survive a power loss: no dot above it leaves the node.
    lease_durable: u64,
    /// Sync flushes in flight, with the lease each makes durable.
    lease_syncs: HashMap<u64, u64>,
    /// Syncs of the membership state in flight: token → its number (see `sync_membership`).
    meta_syncs: HashMap<u64, u64>,
    /// Membership syncs asked for, and the newest completed (all before it too).
    meta_sync_asked: u64,
    meta_sync_done: u64,
    /// Client writes waiting for the lease's sync before they mint a dot.
    lease_waiters: local::LeaseWaiters,
    /// Writes this node coordinated recently, by write id: a retry that arrives after
    /// its write was overwritten is answered with it instead of writing it again.
    recent_writes: RecentWrites,
    /// The layouts in effect, the vote, staged changes and transfers.
    members: membership::Members,
    /// Client reads started (every [`READ_CHECK_EVERY`]th that asks fewer than all
    /// its targets is checked).
    reads_started: u64,
}

/// One read in this many of those that ask fewer replicas than they could (R below
/// N) also compares the digests of the others, in the background, and repairs what
/// differs: R = one reads converge without waiting on, or loading, every replica.
pub const READ_CHECK_EVERY: u64 = 10;

/// Most operations a node keeps in flight (client requests it coordinates, replica
/// writes waiting for their flush, ...); requests that would start more are refused
/// with [`Error::Overloaded`].
pub const OPS_MAX: usize = 65_536;

/// Most writes waiting for a counter lease's sync.
pub const LEASE_WAITERS_MAX: usize = 4096;

/// Counters are leased in steps of this many, so the lease is rarely written.
///
/// No dot above the *durable* lease is minted: a write that would mint one waits for
/// the lease's sync (fdatasync, whatever the persist policy), because under `buffer`
/// or `periodic` a power loss would roll an unsynced lease back and the node would
/// mint dots it already handed out (in answers or read contexts) again for other
/// values, a divergence no digest sees. Leases are renewed half a step ahead with a
/// sync of their own, so in the steady state no write waits.
pub const COUNTER_LEASE_STEP: u64 = 10_000;

/// How far above the counter this node minted a counter of its own actor that
/// another replica, a context or the disk names may be. A disk that went back to an
/// older copy loses at most what was minted since; 2^40 is years of writes. A state
/// past it is corrupt or forged and is refused, so it cannot push the lease so far
/// up that it saturates and no write mints a dot again.
pub const OWN_COUNTER_JUMP_MAX: u64 = 1 << 40;

/// The highest counter of its own actor a node accepts or mints (far below `u64::MAX`,
/// so a dot's `counter + 1` and the lease's step never overflow).
pub const OWN_COUNTER_MAX: u64 = 1 << 62;

impl<S: Store> Core<S> {
    /// A node at monotonic time `now_ms` and wall-clock time `wall_ms`; every peer starts as up.
    pub fn new(cfg: CoreConfig, store: S, now_ms: u64, wall_ms: u64) -> Result<Self, StartError> {
        if cfg!(not(feature = "bug-variants")) && cfg.bugs != Bugs::default() {
            return Err(StartError::BugsNotBuilt);
        }
        cfg.layout.check()?;
        let members = membership::Members::load(&store, cfg.me, &cfg.layout, cfg.transfer_bytes_per_s, now_ms)?;
        let ring = members.cluster.newest().checked_ring()?;
        let ids: Vec<NodeId> = members.cluster.members().into_iter().collect();
        let detector = Detector::new(cfg.me, cfg.incarnation, ids, cfg.down_after_ms, now_ms);
        let mut hints = HintIndex::new(cfg.hints, now_ms);
        for h in store.scan_hints()? {
            hints.record(h.owner, &h.key, h.bytes, h.created_ms);
        }
        let actor = membership::load_actor(&store, cfg.me, cfg.epoch)?;
        let mut aae = AntiEntropy::new(cfg.aae, &ring, cfg.me, now_ms);
        let mut purged_own = 0;
        for (key, seen) in store.scan_purged()? {
            purged_own = purged_own.max(seen.max_counter(actor));
            aae.load_purged(&key, seen, now_ms);
        }
        let counter = store.counter_lease()?;
        // (A node mints up to OWN_COUNTER_MAX, and leases a step past what it minted.)
        if counter > OWN_COUNTER_MAX + COUNTER_LEASE_STEP {
            let e = format!("the counter lease {counter} is past {OWN_COUNTER_MAX}: the data dir is damaged");
            return Err(StartError::Store(Error::Storage(e)));
        }
        let mut core = Core {
            cfg,
            ring,
            detector,
            hints,
            handoff: Default::default(),
            store,
            next_id: 1,
            ops: HashMap::new(),
            rpcs: HashMap::new(),
            rpc_deadlines: BTreeSet::new(),
            flushes: HashMap::new(),
            deadlines: BTreeSet::new(),
            out: VecDeque::new(),
            now_ms,
            wall_offset_ms: wall_ms.saturating_sub(now_ms),
            next_ping_ms: now_ms,
            next_handoff_ms: now_ms,
            stats: Stats::default(),
            lag: LagTracker::default(),
            aae,
            actor,
            counter,
            counter_lease: counter,
            // The driver makes the store durable when it opens it.
            lease_durable: counter,
            lease_syncs: HashMap::new(),
            meta_syncs: HashMap::new(),
            meta_sync_asked: 0,
            meta_sync_done: 0,
            lease_waiters: Default::default(),
            recent_writes: RecentWrites::default(),
            members,
            reads_started: 0,
        };
        core.load_trees(purged_own)?;
        core.start_membership()?;
        Ok(core)
    }

    /// This node's actor in version vectors.
    pub fn actor(&self) -> Actor {
        self.actor
    }

    /// The store.
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
        self.detector.is_up(id)
    }

    /// The next effect to carry out.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output> {
        self.check_bounds();
        self.out.pop_front()
    }

    /// When [`Core::handle_timeout`] must next be called.
    #[must_use]
    pub fn poll_timeout(&self) -> u64 {
        let ops = self.deadlines.first().map_or(u64::MAX, |d| d.0);
        let rpcs = self.rpc_deadlines.first().map_or(u64::MAX, |d| d.0);
        let leases = self.lease_waiters.due_ms();
        ops.min(rpcs).min(leases).min(self.next_ping_ms).min(self.next_handoff_ms).min(self.aae.next_wakeup_ms())
    }

    /// Time-to-all-replicas samples (ms) since the last call; the driver records them.
    pub fn take_lag_samples(&mut self) -> Vec<u64> {
        self.lag.take_samples()
    }

    /// Writes acked but not yet on every home replica, and writes that stopped being tracked.
    pub fn lag_pending(&self) -> (usize, u64) {
        (self.lag.tracked(), self.lag.untracked)
    }

    /// Ops in flight (for tests and metrics).
    pub fn ops_in_flight(&self) -> usize {
        self.ops.len()
    }

    /// Time only moves forward, whatever the driver passes.
    fn tick(&mut self, now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
    }

    fn wall_ms(&self) -> u64 {
        self.now_ms + self.wall_offset_ms
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn reply(&mut self, req: ReqId, resp: Result<Response, Error>) {
        let resp = resp.unwrap_or_else(Response::Error);
        resp.for_each_state(|s| self.check_outgoing(s));
        self.out.push_back(Output::Reply { req, resp });
    }

    fn send(&mut self, op: OpId, to: NodeId, req: Request, timeout_ms: u64) {
        req.for_each_state(|s| self.check_outgoing(s));
        debug_assert!(self.ops.contains_key(&op), "an rpc belongs to an op in flight");
        let rpc = self.id();
        let deadline = self.now_ms + timeout_ms.max(1);
        self.rpcs.insert(rpc, (op, to, deadline));
        self.rpc_deadlines.insert((deadline, rpc));
        self.out.push_back(Output::Send { rpc, to, req, timeout_ms });
    }

    fn flush(&mut self, op: OpId) {
        let token = self.id();
        self.flushes.insert(token, op);
        self.out.push_back(Output::Flush { token, sync: false });
    }

    /// A flush durable against power loss whatever the persist policy (votes).
    fn flush_sync(&mut self, op: OpId) {
        let token = self.id();
        self.flushes.insert(token, op);
        self.out.push_back(Output::Flush { token, sync: true });
    }

    fn timeout_ms(&self, asked: Option<u32>) -> Result<u64, Error> {
        match asked {
            None => Ok(self.cfg.request_timeout_ms),
            Some(0) => Err(Error::BadRequest("timeout must be positive".into())),
            Some(t) if u64::from(t) > REQUEST_TIMEOUT_MS_MAX => {
                Err(Error::BadRequest(format!("timeout {t} ms is over the limit of {REQUEST_TIMEOUT_MS_MAX} ms")))
            }
            Some(t) => Ok(u64::from(t)),
        }
    }

    /// A make-durable request nobody waits on (the writes' own acks do not depend on it).
    fn flush_unawaited(&mut self) {
        let token = self.id();
        self.out.push_back(Output::Flush { token, sync: false });
    }

    /// An fdatasync of everything written so far, whatever the persist policy: for the
    /// membership state, which is small and rarely written, and which a power loss must
    /// not roll back on a `buffer` node (a transition seen to end, then beginning again,
    /// waits for participants an operator may have retired since). The transition takes
    /// no step while one is in flight ([`Core::membership_durable`]); a failed one is
    /// asked again.
    fn sync_membership(&mut self) {
        let token = self.id();
        self.meta_sync_asked += 1;
        self.meta_syncs.insert(token, self.meta_sync_asked);
        self.out.push_back(Output::Flush { token, sync: true });
    }

    /// Whether every membership sync asked for has completed.
    fn membership_durable(&self) -> bool {
        self.meta_sync_done >= self.meta_sync_asked
    }

    fn is_member(&self, id: NodeId) -> bool {
        self.members.cluster.is_member(id)
    }

    /// A request arrived (already authorised by the driver).
    pub fn handle_request(&mut self, now_ms: u64, req_id: ReqId, req: Request) {
        self.tick(now_ms);
        // Requests that start operations wait for answers; past the bound they are
        // refused, and requests answered at once (pings, status, reads of one replica) still run.
        let starts_op = matches!(
            req,
            Request::Get(_)
                | Request::Put(_)
                | Request::Inspect { .. }
                | Request::ReplicaPut { .. }
                | Request::ReplicaPutBatch { .. }
                | Request::ReplicaHint { .. }
        );
        if starts_op && self.ops.len() + self.lease_waiters.len() >= OPS_MAX {
            let e = format!("node {} has {OPS_MAX} operations in flight", self.cfg.me);
            return self.reply(req_id, Err(Error::Overloaded(e)));
        }
        if matches!(req, Request::Get(_) | Request::Put(_) | Request::Inspect { .. }) && self.outside() {
            let e = self.outside_error();
            return self.reply(req_id, Err(e));
        }
        // A forgotten node's data may predate what the cluster acknowledged and purged
        // since: it neither serves it to a peer nor takes new state (a peer that has not
        // heard of the forget yet still asks).
        let replica_layer = matches!(
            req,
            Request::ReplicaGet { .. }
                | Request::ReplicaDigest { .. }
                | Request::ReplicaPut { .. }
                | Request::ReplicaPutBatch { .. }
                | Request::ReplicaHint { .. }
                | Request::HintGet { .. }
                | Request::AaeRoots { .. }
                | Request::AaeCompare { .. }
                | Request::RangeFetch { .. }
        );
        if replica_layer && self.members.cluster.is_lost(self.cfg.me) {
            let e = self.outside_error();
            return self.reply(req_id, Err(e));
        }
        let immediate = match req {
            Request::Get(g) => self.start_get(req_id, g),
            Request::Put(p) => self.start_put(req_id, p),
            Request::Inspect { key } => self.start_inspect(req_id, key),
            // `AnsweredBy::Driver`: the driver answers these from [`Core::report`].
            Request::Status | Request::Stats | Request::Ring { .. } | Request::Fault { .. } => {
                Err(Error::BadRequest("the node's driver answers this request, not its core".into()))
            }
            Request::ReplicaGet { key } => self.replica_get(&key).map(|s| Some(Response::ReplicaState(s))),
            Request::ReplicaDigest { key } => self.replica_digest(&key).map(|d| Some(Response::Digest(d))),
            Request::ReplicaPut { key, set } => self.replica_put(req_id, &key, &set),
            Request::ReplicaPutBatch { items, sync } => self.replica_put_batch(req_id, items, sync),
            Request::ReplicaHint { owner, key, set } => self.take_hint(req_id, owner, &key, &set),
            Request::HintGet { key } => self.hints_for(&key).map(|h| Some(Response::Hints(h))),
            Request::AaeRoots { fingerprint, ranges } => self.aae_roots(fingerprint, &ranges).map(Some),
            Request::AaeCompare { fingerprint, range, leaves, entries } => {
                self.aae_compare(fingerprint, range, &leaves, entries).map(Some)
            }
            Request::Ping { from, gossip, view } => Ok(Some(self.on_ping(from, &gossip, &view))),
            Request::LayoutGet => Ok(Some(Response::Layout(serde_bytes::ByteBuf::from(self.members.cluster.encode())))),
            Request::LayoutPush { cluster } => self.take_cluster(&cluster).map(|()| Some(Response::ReplicaAck)),
            Request::LayoutPrepare { epoch, ballot } => self.layout_prepare(req_id, epoch, ballot).map(|()| None),
            Request::LayoutAccept { epoch, ballot, layout } => {
                self.layout_accept(req_id, epoch, ballot, &layout).map(|()| None)
            }
            Request::RangeFetch { epoch, lo, hi, from, bytes_max } => {
                self.range_fetch(epoch, lo, hi, from, bytes_max).map(Some)
            }
            Request::Cluster(admin) => self.cluster_admin(req_id, admin),
            _ => Err(Error::BadRequest("unsupported request".into())),
        };
        match immediate {
            Ok(Some(resp)) => self.reply(req_id, Ok(resp)),
            Ok(None) => {}
            Err(e) => self.reply(req_id, Err(e)),
        }
    }

    /// The driver finished a `Flush`: writes made before it are durable.
    pub fn handle_flushed(&mut self, now_ms: u64, token: u64, result: Result<(), Error>) {
        self.tick(now_ms);
        if let Some(lease) = self.lease_syncs.remove(&token) {
            match &result {
                Ok(()) => self.lease_durable = self.lease_durable.max(lease),
                Err(e) => {
                    // Not durable: the next write renews it again (else writes would wait
                    // for a renewal that never comes).
                    tracing::warn!("syncing a counter lease: {e}");
                    self.counter_lease = self.lease_durable;
                }
            }
            // Writes that waited for it go on (or, if it failed, wait for the next one).
            let waiting = self.lease_waiters.take();
            for (give_up_ms, req, p) in waiting {
                match self.start_put_by(req, p, Some(give_up_ms)) {
                    Ok(Some(resp)) => self.reply(req, Ok(resp)),
                    Ok(None) => {}
                    Err(e) => self.reply(req, Err(e)),
                }
            }
            return;
        }
        if let Some(seq) = self.meta_syncs.remove(&token) {
            match result {
                // Syncs complete in order of asking for them, or cover less: the newest wins.
                Ok(()) => self.meta_sync_done = self.meta_sync_done.max(seq),
                Err(e) => {
                    tracing::warn!("syncing the membership state: {e}; again");
                    if let Err(e) = self.store.put_meta("cluster", &self.members.cluster.encode()) {
                        tracing::warn!("storing the cluster layout: {e}");
                    }
                    // The next one covers it; until it completes nothing is durable.
                    self.sync_membership();
                }
            }
            return;
        }
        let Some(op_id) = self.flushes.remove(&token) else { return };
        match self.ops.remove(&op_id) {
            Some(Op::ReplicaFlush { req, refused }) => self.reply(req, result.map(|_| write::replica_ack(refused))),
            Some(Op::PutFlush(pending)) => match result {
                Ok(()) => self.replicate(op_id, pending),
                Err(e) => self.reply(pending.req, Err(e)),
            },
            Some(Op::MetaReply { req, vote, resp }) => self.meta_flushed(req, vote, resp, result),
            Some(Op::FetchFlush { job, epoch, keys, bytes, next }) => {
                self.fetch_flushed(job, epoch, keys, bytes, next, result)
            }
            Some(other) => {
                self.ops.insert(op_id, other);
            }
            None => {}
        }
    }

    /// The answer to (or failure of) a request this node sent.
    pub fn handle_response(&mut self, now_ms: u64, rpc: RpcId, result: Result<Response, Error>) {
        self.tick(now_ms);
        let Some((op_id, from, deadline)) = self.rpcs.remove(&rpc) else { return };
        self.rpc_deadlines.remove(&(deadline, rpc));
        if result.is_ok() {
            self.detector.on_reachable(from);
        }
        // A node's own error answer is a failure of that replica.
        let result = match result {
            Ok(Response::Error(e)) => Err(e),
            other => other,
        };
        if let Err(Error::WrongLayout { epoch, .. }) = &result {
            self.on_wrong_layout(from, *epoch);
        }
        match self.ops.get(&op_id) {
            Some(Op::Get { .. }) => self.get_response(op_id, from, result),
            Some(Op::Put(_)) => self.put_response(op_id, from, result),
            Some(Op::Forward { .. }) => self.forward_response(op_id, from, result),
            Some(Op::Inspect { .. }) => self.inspect_response(op_id, from, result),
            Some(Op::Repair) => {
                self.ops.remove(&op_id);
                if matches!(result, Ok(Response::ReplicaAck)) {
                    self.stats.read_repairs += 1;
                }
            }
            Some(Op::Ping { .. }) => self.ping_response(op_id, result),
            Some(Op::Handoff) => self.handoff_response(op_id, result),
            Some(Op::DropHandoff) => self.drop_handoff_response(op_id, result),
            Some(Op::Aae) => self.aae_response(op_id, result),
            Some(Op::PutTail { .. }) => self.put_tail_response(op_id, from, result),
            Some(Op::LagProbe { .. }) => self.lag_probe_response(op_id, result),
            Some(Op::LayoutFetch) => self.layout_fetch_response(op_id, result),
            Some(Op::LayoutPush { .. }) => {
                self.ops.remove(&op_id);
            }
            Some(Op::Commit { .. }) => self.commit_response(op_id, from, result),
            Some(Op::Fetch { .. }) => self.fetch_response(op_id, from, result),
            Some(Op::PutFlush(_) | Op::ReplicaFlush { .. } | Op::MetaReply { .. } | Op::FetchFlush { .. }) | None => {}
        }
    }

    /// Time passed: fire deadlines, pings and handoff.
    pub fn handle_timeout(&mut self, now_ms: u64) {
        self.tick(now_ms);
        let now_ms = self.now_ms;
        while let Some(&(at, op_id)) = self.deadlines.first() {
            if at > now_ms {
                break;
            }
            self.deadlines.remove(&(at, op_id));
            self.op_deadline(op_id);
        }
        // After the ops' own deadlines, so an op due now answers "timeout", not "failed".
        while let Some(&(at, rpc)) = self.rpc_deadlines.first() {
            if at > now_ms {
                break;
            }
            let to = self.rpcs.get(&rpc).map_or(0, |r| r.1);
            self.handle_response(now_ms, rpc, Err(Error::Unreachable(format!("node {to} did not answer in time"))));
        }
        self.expire_lease_waiters();
        if now_ms >= self.next_ping_ms {
            self.next_ping_ms = now_ms + self.cfg.ping_interval_ms;
            self.ping_round();
        }
        // A quiet node (forgotten, or not yet told its fate since it started) only
        // listens: nothing it holds goes to a peer (hints, anti-entropy, the drop).
        // (`aae_round` keeps its timers going and returns.)
        let quiet = self.quiet();
        if now_ms >= self.next_handoff_ms {
            self.next_handoff_ms = now_ms + HANDOFF_INTERVAL_MS;
            if !quiet {
                self.handoff_round();
            }
            self.lag_round();
            self.membership_round();
        }
        self.aae_round();
    }

    fn op_deadline(&mut self, op_id: OpId) {
        match self.ops.get(&op_id) {
            Some(Op::Get { .. }) => self.get_deadline(op_id),
            Some(Op::Inspect { .. }) => self.inspect_deadline(op_id),
            Some(Op::Put(_)) => self.put_deadline(op_id),
            _ => {}
        }
    }

    /// Hints dropped past the tombstone grace since start (cheaper than [`Core::report`]).
    pub fn hints_expired(&self) -> u64 {
        self.hints.expired
    }
}

fn unexpected(from: NodeId, r: &Response) -> Error {
    Error::Protocol(format!("node {from} sent an unexpected answer: {r:?}"))
}
