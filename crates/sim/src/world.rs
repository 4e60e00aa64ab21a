//! The simulated world: one seeded event loop driving every node's real `Core`,
//! a network with latency, loss, duplication, reordering and partitions, disks
//! that lose unflushed writes on a crash, skewed clocks, and clients.
//!
//! A run has two phases: *active* (clients work, faults strike: crashes, power
//! losses, disk wipes, partitions, clock jumps) and *healing* (partitions healed,
//! crashed nodes restarted, the network made reliable, no client request at all)
//! until every key's home replicas agree, by hinted handoff and anti-entropy
//! alone, or 30 s of virtual time pass. The final state of every key is then read
//! straight off the home replicas' disks.

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::rc::Rc;

use qkv_core::hints::HintLimits;
use qkv_core::layout::Layout;
use qkv_core::replica::Limits;
use qkv_core::{AaeConfig, Bugs, Core, CoreConfig, Output, Ring};
use qkv_proto::{Dot, DvvSet, NodeId, Request, Response, Seen};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::checker::FinalKey;
use crate::disk::{Contents, Disk, SharedDisk};
use crate::history::{Entry, History, OpKind, Outcome};
use crate::workload::{ClientState, Workload};

mod admin;

/// What to simulate.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Nodes (3 to 7).
    pub nodes: usize,
    /// Replication factor.
    pub n: usize,
    /// Clients.
    pub clients: usize,
    /// Operations per client.
    pub ops_per_client: usize,
    /// What the clients do.
    pub workload: Workload,
    /// Inject crashes, partitions and clock jumps.
    pub faults: bool,
    /// Probability a message is lost (active phase).
    pub loss: f64,
    /// Probability a message is delivered twice (active phase).
    pub dup: f64,
    /// Share of injected faults that are a power loss of every node at once.
    pub power_loss: f64,
    /// Share of injected faults that wipe one node's disk.
    pub wipe: f64,
    /// Longest crash or partition, ms.
    pub outage_ms_max: u64,
    /// Share of nodes that persist with `buffer` (the rest with `sync`).
    pub buffer: f64,
    /// Probability that one store operation or flush fails with an I/O error (active phase).
    pub storage_errors: f64,
    /// Model a driver that keeps a `buffer` disk's epoch after an unclean shutdown (as
    /// `qkv-node` once did), so the counter lease alone must keep dots unique.
    pub keep_epoch: bool,
    /// Share of seeds in which an operator joins, retires and replaces nodes (see `admin`).
    pub membership: f64,
    /// Session clients (every other client) send their floors with their requests;
    /// without, the checker still holds their reads to the session rules (and finds
    /// them broken).
    pub sessions: bool,
    /// Deliberate bugs in every node.
    pub bugs: Bugs,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            nodes: 5,
            n: 3,
            clients: 6,
            ops_per_client: 40,
            workload: Workload::Mixed,
            sessions: true,
            faults: true,
            loss: 0.01,
            dup: 0.01,
            power_loss: 0.1,
            wipe: 0.05,
            outage_ms_max: 3_000,
            buffer: 0.0,
            storage_errors: 0.0,
            keep_epoch: false,
            membership: 0.0,
            bugs: Bugs::default(),
        }
    }
}

/// Counters of a run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Client operations invoked.
    pub ops: u64,
    /// Messages sent.
    pub messages: u64,
    /// Messages lost at random.
    pub lost: u64,
    /// Messages delivered twice.
    pub duplicated: u64,
    /// Messages dropped by a partition.
    pub partitioned: u64,
    /// Faults injected, by kind.
    pub faults: BTreeMap<&'static str, u64>,
    /// What the nodes counted, summed over every incarnation: hints handed to another
    /// home replica, hints dropped past the grace, tombstones purged, writes refused
    /// at the per-key limit.
    pub hints_redirected: u64,
    /// See `hints_redirected`.
    pub hints_expired: u64,
    /// See `hints_redirected`.
    pub tombstones_purged: u64,
    /// See `hints_redirected`.
    pub key_full: u64,
    /// Injected I/O errors: store operations, flushes.
    pub store_errors: u64,
    /// See `store_errors`.
    pub flush_errors: u64,
}

impl Counters {
    fn absorb(&mut self, core: &Core<SharedDisk>) {
        let s = core.report(0);
        self.hints_redirected += s.hints.redirected;
        self.hints_expired += s.hints.expired;
        self.tombstones_purged += s.aae.tombstones_purged;
        self.key_full += s.stats.key_writes_refused;
    }
}

/// The outcome of one run.
pub struct Run {
    /// What the clients did and saw.
    pub history: History,
    /// The final state of every key.
    pub finals: BTreeMap<Vec<u8>, FinalKey>,
    /// Counters.
    pub counters: Counters,
    /// Virtual time at the end, ms.
    pub end_ms: u64,
    /// Dots whose every durable copy a wipe destroyed.
    pub destroyed: BTreeSet<Dot>,
    /// Disk wipes: (node, time ms).
    pub wipes: Vec<(NodeId, u64)>,
    /// Virtual time from healing until every key's home replicas agreed, ms.
    pub converged_after_ms: Option<u64>,
    /// The faults as they happened: (time ms, what), for a replay's trace.
    pub fault_log: Vec<(u64, String)>,
    /// After healing, (observer, peer) pairs where a running node still saw a
    /// running peer down at the deadline.
    pub stuck_down: Vec<(NodeId, NodeId)>,
    /// Why the membership changes did not end in one stable layout every node holds.
    pub unsettled: Option<String>,
    /// Epochs for which two different layouts were seen (one is committed per epoch).
    pub layout_conflicts: Vec<String>,
    /// Membership the operator saw go back (see `Admin::regressions`).
    pub membership_regressions: Vec<String>,
    /// Virtual time stopped: one instant took more events than any schedule needs.
    pub livelock: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Addr {
    /// A node; `inc` 0 means whichever incarnation is running.
    Node(NodeId, u64),
    Client(u32),
}

impl Addr {
    /// The host, whatever the incarnation.
    fn host(self) -> Addr {
        match self {
            Addr::Node(n, _) => Addr::Node(n, 0),
            c => c,
        }
    }
}

#[derive(Clone, Debug)]
enum Body {
    Req(Request),
    Resp(Response),
}

#[derive(Clone, Debug)]
enum Ev {
    Deliver {
        from: Addr,
        to: Addr,
        corr: u64,
        body: Box<Body>,
    },
    Timer {
        node: NodeId,
        inc: u64,
    },
    Flushed {
        node: NodeId,
        inc: u64,
        token: u64,
        /// An fdatasync (not a `buffer` node's write to the OS).
        durable: bool,
    },
    ClientNext {
        client: u32,
    },
    ClientTimeout {
        client: u32,
        seq: u64,
    },
    Crash(NodeId),
    Restart(NodeId),
    /// A node the operator had taken for dead comes back (it counts as active again).
    Return(NodeId),
    Partition(Vec<(NodeId, NodeId)>),
    Heal,
    ClockJump(NodeId, i64),
    /// The operator's next move.
    Admin,
    AdminTimeout {
        seq: u64,
    },
    PowerLoss,
    /// The node's disk is lost (the process with it); it restarts empty.
    Wipe(NodeId),
}

struct SimNode {
    disk: Rc<RefCell<Disk>>,
    core: Option<Core<SharedDisk>>,
    inc: u64,
    pending: BTreeMap<u64, (Addr, u64)>,
    next_req: u64,
    timer_at: Option<u64>,
    mono_offset: u64,
    wall_skew_ms: i64,
    /// The epoch of the node's current disk; a wipe draws a new one.
    epoch: u32,
    /// The boot count the disk holds, as `qkv-node` keeps it: each start takes
    /// `max(boot + 1, wall clock ms)`, so a wiped disk whose wall clock runs behind
    /// starts below its last run's incarnation (the detector must cope).
    boot: u64,
    /// Persist policy `buffer`: a write is acked once in the OS buffer, which a killed
    /// process keeps and a power loss drops; only a sync flush (a counter lease) or the
    /// start (the store is synced when opened) makes it durable. Otherwise `sync`.
    buffer: bool,
    /// Part of the run: a node the operator has not started yet, or one it replaced, is not.
    active: bool,
    /// Started by the operator: its config holds the seeds' layout at epoch 0.
    joiner: bool,
}

struct InFlight {
    seq: u64,
    write_id: Option<u64>,
    key: Vec<u8>,
    op: OpKind,
    invoked_ms: u64,
    forged_floor: bool,
}

struct SimClient {
    state: ClientState,
    seq: u64,
    inflight: Option<InFlight>,
}

/// A client gives up on a request after this long.
const CLIENT_TIMEOUT_MS: u64 = 3_000;
/// After healing, anti-entropy gets this long to make every key's replicas agree (and
/// as long again for each membership change the operator has still to see settle).
const CONVERGE_MS_MAX: u64 = 30_000;

/// Events handled at one virtual instant past which a run is a livelock (a timer that
/// never moves on, two nodes answering each other at once for ever): a real node
/// would spin a core. Ordinary instants hold a few hundred.
const EVENTS_PER_INSTANT_MAX: u64 = 200_000;
const CONVERGE_STEP_MS: u64 = 250;
const WALL_EPOCH_MS: u64 = 1_700_000_000_000;
/// No run goes on longer than this, whatever happens.
const RUN_MS_MAX: u64 = 30 * 60 * 1000;

/// One seeded world.
pub struct World {
    cfg: SimConfig,
    rng: StdRng,
    now: u64,
    /// Events handled at `now` so far, and the livelock found, if any (the run stops).
    at_instant: u64,
    livelock: Option<String>,
    seq: u64,
    queue: BinaryHeap<Reverse<(u64, u64, usize)>>,
    events: BTreeMap<usize, Ev>,
    next_event: usize,
    nodes: BTreeMap<NodeId, SimNode>,
    clients: BTreeMap<u32, SimClient>,
    blocked: BTreeSet<(NodeId, NodeId)>,
    /// Each link's own base latency, ms, drawn at first use.
    link_ms: BTreeMap<(Addr, Addr), u64>,
    reliable: bool,
    history: History,
    counters: Counters,
    /// The cluster layout every node runs on.
    layout: Layout,
    ring: Ring,
    destroyed: BTreeSet<Dot>,
    /// Whole disks lost (wipes, not the unsynced writes of a power loss): (node, time ms).
    disks_lost: Vec<(NodeId, u64)>,
    wipes: Vec<(NodeId, u64)>,
    /// Node incarnations that lost durable data they had acknowledged (a wipe, or a
    /// power loss of a `buffer` node): their acks still in flight vouch for nothing.
    lost_incs: BTreeSet<(NodeId, u64)>,
    fault_log: Vec<(u64, String)>,
    /// Write ids of puts some copy of which was duplicated on the way.
    dup_writes: BTreeSet<u64>,
    /// Lost states: (key, what the lost state had seen, what durable disks covered then).
    losses: Vec<(Vec<u8>, Seen, Seen)>,
    /// The operator, in a seed that changes membership.
    admin: Option<admin::Admin>,
    /// Every layout the operator saw committed, by epoch (the first is the initial one).
    layouts: BTreeMap<u64, Layout>,
}

impl World {
    /// A world for `seed`.
    pub fn new(seed: u64, cfg: SimConfig) -> World {
        let mut rng = StdRng::seed_from_u64(seed);
        // The operator's script comes from a stream of its own: seeds without one replay as before.
        let mut ops_rng = StdRng::seed_from_u64(seed ^ 0x6f70_6572_6174_6f72);
        let horizon = (cfg.ops_per_client as u64) * 40;
        let admin = (cfg.membership > 0.0 && ops_rng.random_bool(cfg.membership.min(1.0)))
            .then(|| admin::Admin::draw(&mut ops_rng, cfg.nodes, cfg.n, horizon));
        let ids: Vec<NodeId> = (1..=cfg.nodes as NodeId).collect();
        let spares = admin.as_ref().map(|a| a.new_nodes()).unwrap_or_default();
        // Half the seeds place keys as every release before layouts did (16 random
        // vnodes per node), half on a new cluster's partitioned ring.
        let members: Vec<(NodeId, String)> = ids.iter().map(|&i| (i, format!("sim-{i}"))).collect();
        let layout = if seed.is_multiple_of(2) {
            Layout::legacy(&members, 16, cfg.n).expect("valid sim layout")
        } else {
            Layout::initial(&members, 64, cfg.n).expect("valid sim layout")
        };
        let ring = layout.ring().expect("valid sim ring");
        let nodes = ids
            .iter()
            .chain(&spares)
            .map(|&id| {
                let node = SimNode {
                    disk: Rc::new(RefCell::new(Disk::default())),
                    core: None,
                    inc: 0,
                    pending: BTreeMap::new(),
                    next_req: 1,
                    timer_at: None,
                    mono_offset: rng.random_range(0..1_000_000_000),
                    wall_skew_ms: rng.random_range(-60_000..=60_000),
                    epoch: rng.random_range(1..=u32::MAX),
                    boot: 0,
                    buffer: rng.random_bool(cfg.buffer),
                    active: id as usize <= cfg.nodes,
                    joiner: id as usize > cfg.nodes,
                };
                (id, node)
            })
            .collect();
        let clients = (1..=cfg.clients as u32)
            .map(|c| {
                let state = ClientState::new(cfg.ops_per_client).in_session(c % 2 == 1, cfg.sessions);
                (c, SimClient { state, seq: 0, inflight: None })
            })
            .collect();
        let mut w = World {
            cfg,
            rng,
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            events: BTreeMap::new(),
            next_event: 0,
            nodes,
            clients,
            blocked: BTreeSet::new(),
            link_ms: BTreeMap::new(),
            reliable: false,
            at_instant: 0,
            livelock: None,
            history: History::default(),
            counters: Counters::default(),
            layout,
            ring,
            destroyed: BTreeSet::new(),
            disks_lost: vec![],
            wipes: vec![],
            lost_incs: BTreeSet::new(),
            fault_log: vec![],
            dup_writes: BTreeSet::new(),
            losses: vec![],
            admin,
            layouts: BTreeMap::new(),
        };
        w.layouts.insert(w.layout.epoch, w.layout.clone());
        for id in ids {
            w.start(id);
        }
        w
    }

    fn at(&mut self, t: u64, ev: Ev) {
        self.seq += 1;
        self.next_event += 1;
        self.events.insert(self.next_event, ev);
        self.queue.push(Reverse((t.max(self.now), self.seq, self.next_event)));
    }

    fn core_config(&self, me: NodeId, inc: u64) -> CoreConfig {
        let mut layout = self.layout.clone();
        if self.nodes[&me].joiner {
            // A new node's config lists the seeds, not itself: it learns the layout from them.
            layout.epoch = 0;
        }
        CoreConfig {
            me,
            incarnation: inc,
            layout,
            limits: Limits {
                key_bytes_max: 1024,
                value_bytes_max: 64 * 1024,
                key_siblings_max: 8,
                key_state_bytes_max: 96 * 1024,
            },
            hints: HintLimits::default(),
            request_timeout_ms: 1000,
            ping_interval_ms: 250,
            down_after_ms: 1000,
            epoch: self.nodes[&me].epoch,
            aae: AaeConfig { interval_ms: 500, tombstone_grace_ms: 300, ..AaeConfig::default() },
            secret: qkv_proto::Secret([0x5a; qkv_proto::context::SECRET_BYTES]),
            transfer_bytes_per_s: self
                .admin
                .as_ref()
                .map_or(qkv_core::router::TRANSFER_BYTES_PER_S_DEFAULT, |a| a.transfer_bytes_per_s),
            bugs: self.cfg.bugs,
        }
    }

    fn mono(&self, id: NodeId) -> u64 {
        self.now + self.nodes[&id].mono_offset
    }

    fn start(&mut self, id: NodeId) {
        let inc = self.nodes[&id].inc + 1;
        if self.nodes[&id].buffer && inc > 1 && !self.cfg.keep_epoch {
            // As `qkv-node` does: a `buffer` disk after an unclean shutdown (every stop
            // here is one) takes a new epoch, since it may have lost writes it acked.
            let epoch = self.rng.random_range(1..=u32::MAX);
            self.nodes.get_mut(&id).expect("node exists").epoch = epoch;
        }
        let wall = (WALL_EPOCH_MS + self.now).saturating_add_signed(self.nodes[&id].wall_skew_ms);
        let boot = (self.nodes[&id].boot + 1).max(wall);
        let cfg = self.core_config(id, boot);
        let mono = self.mono(id);
        let errors = if self.reliable { 0.0 } else { self.cfg.storage_errors };
        let seed = self.rng.random();
        let node = self.nodes.get_mut(&id).expect("node exists");
        node.boot = boot;
        // Opening the store syncs it (fjall's recovery, then `persist`). Reading it back
        // at start never fails here (a node that cannot read its disk does not start).
        node.disk.borrow_mut().sync();
        node.disk.borrow_mut().error_rate = 0.0;
        let core = Core::new(cfg, SharedDisk(node.disk.clone()), mono, wall).expect("a sim node starts");
        let mut d = node.disk.borrow_mut();
        (d.error_rate, d.error_rng) = (errors, seed);
        drop(d);
        node.core = Some(core);
        node.inc = inc;
        node.timer_at = None;
        self.schedule_timer(id);
    }

    /// The dots a lost `state` of `key` took with it: its siblings, and the acknowledged
    /// writes it had seen overwritten (the overwrite may have been the only record of
    /// that), unless `kept` (what the durable copies left cover) covers them.
    ///
    /// Writes acknowledged later (their answer was on the wire) are settled at the end
    /// of the run from `losses`: what the lost state covered and the disks kept then.
    fn note_destroyed(&mut self, key: &[u8], state: &DvvSet, kept: Seen) {
        let acked = self.history.entries.iter().filter(|e| e.key == key).filter_map(|e| e.dot());
        let candidates: Vec<Dot> =
            state.siblings().iter().map(|s| s.dot).chain(acked.filter(|&d| state.covers_dot(d))).collect();
        for dot in candidates {
            if !kept.covers(dot) {
                self.destroyed.insert(dot);
            }
        }
        self.losses.push((key.to_vec(), state.seen(), kept));
    }

    /// Node `id`'s core may have dropped hints past the grace (see the core's handoff):
    /// the writes whose last durable copy went with them are destroyed, as by a wipe.
    fn note_expired_hints(&mut self, id: NodeId, held: BTreeMap<(NodeId, Vec<u8>), qkv_core::Hint>, before: u64) {
        let Some(core) = self.nodes[&id].core.as_ref() else { return };
        if core.hints_expired() == before {
            return;
        }
        let gone: Vec<(Vec<u8>, DvvSet)> = {
            let d = self.nodes[&id].disk.borrow();
            held.into_iter()
                .filter(|(k, _)| !d.current().hints.contains_key(k))
                .map(|((_, key), h)| (key, h.set))
                .collect()
        };
        self.note_gone(id, gone);
    }

    /// States node `id` no longer holds (its copy is gone once deleted, flushed or not):
    /// the writes in them that no durable disk keeps are destroyed.
    fn note_gone(&mut self, id: NodeId, gone: Vec<(Vec<u8>, DvvSet)>) {
        if gone.is_empty() {
            return;
        }
        let disks: Vec<Disk> = self
            .nodes
            .iter()
            .map(|(&n, node)| {
                let mut d = node.disk.borrow().clone();
                if n == id {
                    d.sync();
                }
                d
            })
            .collect();
        self.destroy_unless_kept(gone, &disks, true);
    }

    /// The writes in `states` that none of `disks` keeps durably (`running`: see
    /// [`Disk::durable_seen`]) are destroyed.
    fn destroy_unless_kept(&mut self, states: Vec<(Vec<u8>, DvvSet)>, disks: &[Disk], running: bool) {
        for (key, set) in states {
            let kept = join_all(disks.iter().map(|d| d.durable_seen(&key, running)));
            self.note_destroyed(&key, &set, kept);
        }
    }

    /// Node `id` deleted hints or keys on the word of a node whose disk was lost since
    /// it acked them: the writes no durable disk keeps now went with that disk.
    fn note_deleted_on_lost_word(&mut self, id: NodeId, before: &Contents) {
        let gone: Vec<(Vec<u8>, DvvSet)> = {
            let d = self.nodes[&id].disk.borrow();
            let now = d.current();
            let hints = before
                .hints
                .iter()
                .filter(|(k, _)| !now.hints.contains_key(*k))
                .map(|((_, k), h)| (k.clone(), h.set.clone()));
            let now_keys: BTreeSet<&[u8]> = now.entries().map(|(k, _)| k).collect();
            let keys = before.entries().filter(|(k, _)| !now_keys.contains(k)).map(|(k, s)| (k.to_vec(), s.clone()));
            hints.chain(keys).collect()
        };
        self.note_gone(id, gone);
    }

    /// Node `id`'s disk is lost: note every dot it held that no other durable disk holds
    /// (or covers), then wipe it; the node restarts under a new epoch.
    fn wipe(&mut self, id: NodeId) {
        self.note_disk_lost(id);
        let node = self.nodes.get_mut(&id).expect("node exists");
        node.disk.borrow_mut().wipe();
        node.epoch = self.rng.random_range(1..=u32::MAX);
        node.boot = 0;
    }

    /// Node `id`'s disk is lost: a wipe's bookkeeping (the strict-read excuse for
    /// every key it homed, and what it alone held).
    fn note_disk_lost(&mut self, id: NodeId) {
        self.wipes.push((id, self.now));
        self.disks_lost.push((id, self.now));
        self.note_holdings_lost(id);
    }

    /// What node `id` holds counts as lost from now: its disk is lost, or the operator
    /// forgot it (the cluster takes nothing from it again). The dots no other durable
    /// disk keeps are destroyed, and its acks still on their way vouch for nothing.
    fn note_holdings_lost(&mut self, id: NodeId) {
        // Every incarnation's acks: an ack of an earlier one may still be on its way.
        self.lost_incs.extend((0..=self.nodes[&id].inc).map(|i| (id, i)));
        let others: Vec<Disk> =
            self.nodes.iter().filter(|(n, _)| **n != id).map(|(_, n)| n.disk.borrow().clone()).collect();
        // What the process saw: a `buffer` node acked writes not yet durable.
        let mine = held_states(self.nodes[&id].disk.borrow().current());
        self.destroy_unless_kept(mine, &others, true);
    }

    /// Every node loses power: `buffer` nodes lose what was acked but never synced. Note
    /// the dots no disk keeps durably (the checker excuses them, as `buffer` promises
    /// nothing across a power loss) and, as for a wipe, which home replicas lost writes.
    fn lose_unsynced(&mut self) {
        let disks: Vec<Disk> = self.nodes.values().map(|n| n.disk.borrow().clone()).collect();
        let mut lost = vec![];
        let mut states = vec![];
        for (&id, n) in &self.nodes {
            let d = n.disk.borrow();
            // A `sync` node acks only what it synced: what it loses was never acked (or it is a bug to catch).
            if !n.buffer || d.current() == d.durable() {
                continue;
            }
            lost.push(id);
            states.extend(held_states(d.current()));
        }
        self.destroy_unless_kept(states, &disks, false);
        for id in lost {
            self.wipes.push((id, self.now));
            self.lost_incs.insert((id, self.nodes[&id].inc));
        }
    }

    fn crash(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).expect("node exists");
        // A killed `buffer` node keeps what reached the OS; a `sync` one is modelled harder:
        // it loses whatever was not synced, as if its power went with it.
        if let Some(core) = node.core.take() {
            self.counters.absorb(&core);
            if !node.buffer {
                node.disk.borrow_mut().crash();
            }
            node.disk.borrow_mut().drop_syncs();
            node.pending.clear();
            node.timer_at = None;
        }
    }

    /// Run a node's core, then carry out its outputs. A hint the core drops as
    /// expired (in any step: timers also run on requests) may be a write's last copy.
    fn with_core(&mut self, id: NodeId, f: impl FnOnce(&mut Core<SharedDisk>, u64)) {
        let held = self.nodes.get(&id).and_then(|n| {
            let d = n.disk.borrow();
            let hints = &d.current().hints;
            (!hints.is_empty()).then(|| hints.clone()).zip(n.core.as_ref().map(|c| c.hints_expired()))
        });
        self.step_core(id, f);
        if let Some((held, before)) = held {
            self.note_expired_hints(id, held, before);
        }
    }

    fn step_core(&mut self, id: NodeId, f: impl FnOnce(&mut Core<SharedDisk>, u64)) {
        let mono = self.mono(id);
        let now = self.now;
        let Some(node) = self.nodes.get_mut(&id) else { return };
        node.disk.borrow_mut().now = now;
        let Some(core) = node.core.as_mut() else { return };
        f(core, mono);
        let mut outs = vec![];
        while let Some(o) = core.poll_output() {
            outs.push(o);
        }
        let inc = self.nodes[&id].inc;
        for o in outs {
            match o {
                Output::Send { rpc, to, req, .. } => {
                    self.send(Addr::Node(id, inc), Addr::Node(to, 0), rpc, Body::Req(req));
                }
                Output::Reply { req, resp } => {
                    if let Some((to, corr)) = self.nodes.get_mut(&id).and_then(|n| n.pending.remove(&req)) {
                        self.send(Addr::Node(id, inc), to, corr, Body::Resp(resp));
                    }
                }
                Output::Flush { token, sync } => {
                    if self.nodes[&id].buffer && !sync {
                        // Already in the OS buffer: acked at once, durable only at the next sync.
                        self.at(self.now, Ev::Flushed { node: id, inc, token, durable: false });
                    } else {
                        // fdatasync takes a while: a crash in between loses the write, and
                        // it covers only what was written before it was asked for.
                        self.nodes[&id].disk.borrow_mut().begin_sync(token);
                        let delay = self.rng.random_range(1..=10);
                        self.at(self.now + delay, Ev::Flushed { node: id, inc, token, durable: true });
                    }
                }
            }
        }
        self.schedule_timer(id);
    }

    fn schedule_timer(&mut self, id: NodeId) {
        let now = self.now;
        let Some(node) = self.nodes.get_mut(&id) else { return };
        let Some(core) = node.core.as_ref() else { return };
        let due = core.poll_timeout().saturating_sub(node.mono_offset).max(now);
        if node.timer_at.is_none_or(|t| due < t) {
            node.timer_at = Some(due);
            let inc = node.inc;
            self.at(due, Ev::Timer { node: id, inc });
        }
    }

    fn node_of(a: Addr) -> Option<NodeId> {
        match a {
            Addr::Node(n, _) => Some(n),
            Addr::Client(_) => None,
        }
    }

    fn send(&mut self, from: Addr, to: Addr, corr: u64, body: Body) {
        self.counters.messages += 1;
        if let (Some(a), Some(b)) = (Self::node_of(from), Self::node_of(to))
            && self.blocked.contains(&(a, b))
        {
            self.counters.partitioned += 1;
            return;
        }
        if !self.reliable && self.rng.random_bool(self.cfg.loss) {
            self.counters.lost += 1;
            return;
        }
        let copies = if !self.reliable && self.rng.random_bool(self.cfg.dup) { 2 } else { 1 };
        if copies > 1
            && let Body::Req(Request::Put(p)) = &body
            && let Some(id) = p.write_id
        {
            self.dup_writes.insert(id);
        }
        self.counters.duplicated += copies - 1;
        let link = (from.host(), to.host());
        let base = match self.link_ms.get(&link) {
            Some(&b) => b,
            None => {
                let b = self.rng.random_range(0..4);
                self.link_ms.insert(link, b);
                b
            }
        };
        for _ in 0..copies {
            // Per-link base latency, jitter, and rare spikes: messages overtake each other.
            let spike = if self.rng.random_bool(0.02) { self.rng.random_range(20..200) } else { 0 };
            let latency = 1 + base + self.rng.random_range(0..4) + spike;
            self.at(self.now + latency, Ev::Deliver { from, to, corr, body: Box::new(body.clone()) });
        }
    }

    fn deliver(&mut self, from: Addr, to: Addr, corr: u64, body: Body) {
        match (to, body) {
            (Addr::Node(id, inc), body) => {
                let Some(node) = self.nodes.get_mut(&id) else { return };
                if node.core.is_none() || (inc != 0 && inc != node.inc) {
                    return;
                }
                match body {
                    Body::Req(req) => {
                        let rid = node.next_req;
                        node.next_req += 1;
                        node.pending.insert(rid, (from, corr));
                        self.with_core(id, |c, now| c.handle_request(now, rid, req));
                    }
                    Body::Resp(resp) => {
                        // An ack its sender's lost disk no longer backs: what this node
                        // deletes on its word (a hint handed off, a key handed over) may
                        // have been a write's last copy, lost with that disk.
                        let ack = matches!(resp, Response::ReplicaAck | Response::ReplicaBatchAck { .. });
                        let lost_word = ack && matches!(from, Addr::Node(a, i) if self.lost_incs.contains(&(a, i)));
                        let before = lost_word.then(|| node.disk.borrow().current().clone());
                        self.with_core(id, |c, now| c.handle_response(now, corr, Ok(resp)));
                        if let Some(before) = before {
                            self.note_deleted_on_lost_word(id, &before);
                        }
                    }
                }
            }
            (Addr::Client(admin::ADMIN), Body::Resp(resp)) => self.admin_answer(corr, Some(resp)),
            (Addr::Client(c), Body::Resp(resp)) => self.client_done(c, corr, Some(resp)),
            (Addr::Client(_), Body::Req(_)) => {}
        }
    }

    fn client_next(&mut self, c: u32) {
        let Some(cl) = self.clients.get_mut(&c) else { return };
        if cl.inflight.is_some() || cl.state.ops_left == 0 {
            return;
        }
        cl.seq += 1;
        let seq = cl.seq;
        let (key, op, req) = cl.state.next(c, seq, self.cfg.workload, self.cfg.n, &mut self.rng);
        let write_id = match &req {
            Request::Put(p) => p.write_id,
            _ => None,
        };
        let forged_floor = cl.state.sent_forged_floor();
        cl.inflight = Some(InFlight { seq, write_id, key, op, invoked_ms: self.now, forged_floor });
        self.counters.ops += 1;
        let active: Vec<NodeId> = self.nodes.iter().filter(|(_, n)| n.active).map(|(&id, _)| id).collect();
        let node = active[self.rng.random_range(0..active.len())];
        self.send(Addr::Client(c), Addr::Node(node, 0), seq, Body::Req(req));
        self.at(self.now + CLIENT_TIMEOUT_MS, Ev::ClientTimeout { client: c, seq });
    }

    fn client_done(&mut self, c: u32, seq: u64, resp: Option<Response>) {
        let Some(cl) = self.clients.get_mut(&c) else { return };
        if cl.inflight.as_ref().is_none_or(|f| f.seq != seq) {
            return;
        }
        let f = cl.inflight.take().expect("checked");
        let outcome = match resp {
            Some(Response::Put(p)) => {
                cl.state.session_wrote(&f.key, &f.op, p.session.as_ref().unwrap_or(&p.context));
                Outcome::Put { context: p.context, dot: p.dot }
            }
            Some(Response::Get(g)) => {
                Outcome::Get { values: g.values.into_iter().map(|v| v.into_vec()).collect(), context: g.context }
            }
            Some(Response::Error(e)) => Outcome::Failed(e.to_string()),
            Some(other) => Outcome::Failed(format!("unexpected answer {other:?}")),
            None => Outcome::Unknown,
        };
        cl.state.completed(self.cfg.workload, &f.key, &f.op, &outcome);
        let more = cl.state.ops_left > 0;
        self.history.entries.push(Entry {
            client: c,
            key: f.key,
            op: f.op,
            invoked_ms: f.invoked_ms,
            completed_ms: self.now,
            outcome,
            duplicated: f.write_id.is_some_and(|id| self.dup_writes.contains(&id)),
            write_id: f.write_id,
            session: cl.state.is_session(),
            forged_floor: f.forged_floor,
        });
        if more {
            // With an operator, clients pause longer: their requests span every step of
            // the script, not only the first (the ops end within a few seconds otherwise).
            let think_max = if self.admin.is_some() { 200 } else { 10 };
            let think = self.rng.random_range(0..think_max);
            self.at(self.now + think, Ev::ClientNext { client: c });
        }
    }

    fn fault(&mut self, kind: &'static str) {
        *self.counters.faults.entry(kind).or_default() += 1;
    }

    fn log(&mut self, what: String) {
        self.fault_log.push((self.now, what));
    }

    /// Schedule the faults of the active phase, from now until `until`.
    fn plan_faults(&mut self, until: u64) {
        let mut t = self.now + self.rng.random_range(100..600);
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        while t < until {
            if self.rng.random_bool(self.cfg.power_loss) {
                // Power loss: every node at once; only what was flushed survives.
                self.at(t, Ev::PowerLoss);
                let back = t + self.rng.random_range(100..1000);
                for &n in &ids {
                    self.at(back, Ev::Restart(n));
                }
                t += self.rng.random_range(200..1000);
                continue;
            }
            if self.rng.random_bool(self.cfg.wipe) {
                let n = ids[self.rng.random_range(0..ids.len())];
                self.at(t, Ev::Wipe(n));
                let back = t + self.rng.random_range(100..2000);
                self.at(back, Ev::Restart(n));
                t += self.rng.random_range(200..1000);
                continue;
            }
            match self.rng.random_range(0..100) {
                0..30 => {
                    let n = ids[self.rng.random_range(0..ids.len())];
                    self.at(t, Ev::Crash(n));
                    let back = t + self.rng.random_range(100..self.cfg.outage_ms_max.max(101));
                    self.at(back, Ev::Restart(n));
                }
                30..65 => {
                    let oneway = self.rng.random_bool(0.3);
                    let side: BTreeSet<NodeId> = ids.iter().copied().filter(|_| self.rng.random_bool(0.5)).collect();
                    let mut cut = vec![];
                    for &a in &ids {
                        for &b in &ids {
                            if side.contains(&a) && !side.contains(&b) {
                                cut.push((a, b));
                                if !oneway {
                                    cut.push((b, a));
                                }
                            }
                        }
                    }
                    let flapping = self.rng.random_bool(0.3);
                    let end = t + self.rng.random_range(300..self.cfg.outage_ms_max.max(301));
                    if flapping {
                        let mut s = t;
                        while s < end {
                            self.at(s, Ev::Partition(cut.clone()));
                            s += self.rng.random_range(50..300);
                            self.at(s, Ev::Heal);
                            s += self.rng.random_range(50..300);
                        }
                        *self.counters.faults.entry("partition (flapping)").or_default() += 1;
                    } else {
                        self.at(t, Ev::Partition(cut));
                        self.at(end, Ev::Heal);
                        self.fault(if oneway { "partition (one-way)" } else { "partition" });
                    }
                }
                65..75 => {
                    let n = ids[self.rng.random_range(0..ids.len())];
                    let jump = self.rng.random_range(-60_000..=60_000);
                    self.at(t, Ev::ClockJump(n, jump));
                }
                _ => {}
            }
            t += self.rng.random_range(200..1000);
        }
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Deliver { from, to, corr, body } => self.deliver(from, to, corr, *body),
            Ev::Timer { node, inc } => {
                let now = self.now;
                let Some(n) = self.nodes.get_mut(&node) else { return };
                if n.inc != inc || n.core.is_none() {
                    return;
                }
                if n.timer_at == Some(now) {
                    n.timer_at = None;
                }
                self.with_core(node, |c, now| {
                    if c.poll_timeout() <= now {
                        c.handle_timeout(now);
                    }
                });
            }
            Ev::Flushed { node, inc, token, durable } => {
                let Some(n) = self.nodes.get(&node) else { return };
                if n.inc != inc || n.core.is_none() {
                    return;
                }
                if !self.reliable && self.rng.random_bool(self.cfg.storage_errors) {
                    // The flush failed: nothing became durable, and the core must not ack on it.
                    self.counters.flush_errors += 1;
                    let e = qkv_proto::Error::Storage("injected flush error".into());
                    n.disk.borrow_mut().end_sync(token, false);
                    self.with_core(node, |c, now| c.handle_flushed(now, token, Err(e)));
                    return;
                }
                if durable {
                    n.disk.borrow_mut().end_sync(token, true);
                }
                self.with_core(node, |c, now| c.handle_flushed(now, token, Ok(())));
            }
            Ev::ClientNext { client } => self.client_next(client),
            Ev::ClientTimeout { client, seq } => self.client_done(client, seq, None),
            Ev::Crash(n) => {
                if self.nodes[&n].core.is_some() {
                    self.log(format!("node {n} crashes"));
                    self.fault("crash");
                    self.crash(n);
                }
            }
            Ev::Admin => self.admin_tick(),
            Ev::AdminTimeout { seq } => self.admin_answer(seq, None),
            Ev::Return(n) => {
                self.nodes.get_mut(&n).expect("node exists").active = true;
                self.at(self.now, Ev::Restart(n));
            }
            Ev::Restart(n) => {
                if self.nodes[&n].core.is_none() && self.nodes[&n].active {
                    self.start(n);
                    let epoch = qkv_proto::actor_name(qkv_proto::actor(n, self.nodes[&n].epoch));
                    self.log(format!("node {n} starts as {epoch}"));
                }
            }
            Ev::PowerLoss => {
                self.log("power loss (all nodes)".into());
                self.fault("power loss (all nodes)");
                self.lose_unsynced();
                let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
                for n in ids {
                    self.nodes[&n].disk.borrow_mut().crash();
                    self.crash(n);
                }
            }
            Ev::Wipe(n) if self.nodes[&n].active => {
                self.log(format!("node {n} loses its disk"));
                self.fault("disk wipe");
                self.crash(n);
                self.wipe(n);
            }
            Ev::Wipe(_) => {}
            Ev::Partition(cut) => {
                self.log(format!("partition {cut:?}"));
                self.blocked = cut.into_iter().collect();
            }
            Ev::Heal => {
                self.log("partition heals".into());
                self.blocked.clear();
            }
            Ev::ClockJump(n, jump) => {
                // Cores read the wall clock only when they start: a jump shows at the next restart.
                self.fault("clock jump");
                if let Some(node) = self.nodes.get_mut(&n) {
                    node.wall_skew_ms = jump;
                }
            }
        }
    }

    /// Process events until `done` or virtual time `until`.
    fn run_until(&mut self, until: u64, done: impl Fn(&World) -> bool) {
        while !done(self) {
            if self.livelock.is_some() {
                // Time jumps on with nothing happening, so every wait of the run ends.
                self.now = self.now.max(until);
                return;
            }
            match self.queue.peek() {
                Some(&Reverse((t, _, id))) if t <= until => {
                    self.queue.pop();
                    self.at_instant = if t == self.now { self.at_instant + 1 } else { 0 };
                    self.now = t;
                    if self.at_instant > EVENTS_PER_INSTANT_MAX {
                        let ev = self.events.get(&id).map(|e| format!("{e:?}")).unwrap_or_default();
                        let ev: String = ev.chars().take(200).collect();
                        self.livelock = Some(format!("{EVENTS_PER_INSTANT_MAX} events at {t} ms, the last {ev}"));
                        continue;
                    }
                    // Events removed from the map were cancelled (healing drops pending faults).
                    if let Some(ev) = self.events.remove(&id) {
                        self.handle(ev);
                    }
                }
                _ => {
                    self.now = self.now.max(until);
                    return;
                }
            }
        }
    }

    fn clients_done(&self) -> bool {
        self.clients.values().all(|c| c.state.ops_left == 0 && c.inflight.is_none())
    }

    /// Run the whole schedule.
    pub fn run(mut self) -> Run {
        let clients: Vec<u32> = self.clients.keys().copied().collect();
        for c in clients {
            let start = self.rng.random_range(0..50);
            self.at(start, Ev::ClientNext { client: c });
        }
        if self.cfg.faults {
            // With an operator, clients pause up to 200 ms between requests (not 10):
            // faults span their longer run, and so the later steps of the script.
            let per_op = if self.admin.is_some() { 140 } else { 40 };
            let horizon = (self.cfg.ops_per_client as u64) * per_op;
            self.plan_faults(horizon);
        }
        if let Some(a) = &self.admin {
            let (start, via) = (a.start_ms, a.via);
            self.log(format!("operator: stages and commits every change on node {via}"));
            self.at(start, Ev::Admin);
        }
        self.run_until(RUN_MS_MAX, World::clients_done);

        // Healing: no more faults, every node up, a reliable network and disks, then quiet.
        for n in self.nodes.values() {
            let mut d = n.disk.borrow_mut();
            self.counters.store_errors += d.errors;
            (d.error_rate, d.errors) = (0.0, 0);
        }
        self.events.retain(|_, e| {
            !matches!(e, Ev::Crash(_) | Ev::PowerLoss | Ev::Partition(_) | Ev::ClockJump(..) | Ev::Wipe(_))
        });
        self.blocked.clear();
        self.reliable = true;
        let down: Vec<NodeId> =
            self.nodes.iter().filter(|(_, n)| n.core.is_none() && n.active).map(|(&id, _)| id).collect();
        for id in down {
            self.start(id);
        }
        // No client reads from here on: anti-entropy alone must bring every key's home
        // replicas to the same state, within the deadline.
        let keys: BTreeSet<Vec<u8>> = self.history.entries.iter().map(|e| e.key.clone()).collect();
        let healed = self.now;
        let mut converged_after_ms = None;
        // A membership change also moves data, each step after the last one settled:
        // each step the operator has still to see settle gets the deadline again.
        let steps_left = self.admin.as_ref().map_or(0, |a| a.steps_left() as u64);
        let converge_ms = CONVERGE_MS_MAX * (1 + steps_left.max(u64::from(self.admin.is_some())));
        while self.now < healed + converge_ms {
            let step = self.now + CONVERGE_STEP_MS;
            self.run_until(step, |_| false);
            if self.converged(&keys) {
                converged_after_ms = Some(self.now - healed);
                break;
            }
        }

        // Every node up and reachable: every view must say so, within the deadline.
        while !self.stuck_down().is_empty() && self.now < healed + converge_ms {
            let step = self.now + CONVERGE_STEP_MS;
            self.run_until(step, |_| false);
        }
        let stuck_down = self.stuck_down();

        // Writes whose answer arrived after a loss took every copy of them.
        for e in &self.history.entries {
            let Some(dot) = e.dot() else { continue };
            if self.losses.iter().any(|(k, lost, kept)| *k == e.key && lost.covers(dot) && !kept.covers(dot)) {
                self.destroyed.insert(dot);
            }
        }
        let unsettled = self.settled().err();
        let mut layout_conflicts = vec![];
        let held: Vec<(NodeId, Layout)> = self
            .nodes
            .iter()
            .filter_map(|(&id, n)| Some((id, n.core.as_ref()?.membership().cluster.versions)))
            .flat_map(|(id, versions)| versions.into_iter().map(move |l| (id, l)))
            .collect();
        for (id, l) in held {
            if let Err(why) = self.note_layout(id, &l) {
                layout_conflicts.push(why);
            }
        }
        let ring = self.settled().unwrap_or_else(|_| self.ring.clone());
        let rings: Vec<Ring> = self.layouts.values().filter_map(|l| l.ring().ok()).collect();
        let finals = keys
            .into_iter()
            .map(|key| {
                let mut f = self.final_key(&ring, &key);
                if self.admin.is_some() {
                    let ever: BTreeSet<NodeId> = rings.iter().flat_map(|r| r.preference_list(&key).to_vec()).collect();
                    f.homes_ever = ever.into_iter().collect();
                }
                (key, f)
            })
            .collect();
        for n in self.nodes.values() {
            if let Some(core) = &n.core {
                self.counters.absorb(core);
            }
        }
        Run {
            history: self.history,
            finals,
            counters: self.counters,
            end_ms: self.now,
            destroyed: self.destroyed,
            wipes: self.wipes,
            converged_after_ms,
            fault_log: self.fault_log,
            stuck_down,
            unsettled,
            layout_conflicts,
            membership_regressions: self.admin.map(|a| a.regressions).unwrap_or_default(),
            livelock: self.livelock,
        }
    }

    /// Record the layout `node` holds for its epoch; an error when another was seen for it.
    fn note_layout(&mut self, node: NodeId, l: &Layout) -> Result<(), String> {
        match self.layouts.get(&l.epoch) {
            Some(seen) if seen != l => Err(format!("node {node} holds another layout for epoch {}", l.epoch)),
            Some(_) => Ok(()),
            None => {
                self.layouts.insert(l.epoch, l.clone());
                Ok(())
            }
        }
    }

    /// (observer, peer): a running node that sees a running peer down.
    fn stuck_down(&self) -> Vec<(NodeId, NodeId)> {
        let mut out = vec![];
        for (&id, n) in &self.nodes {
            let Some(core) = &n.core else { continue };
            for m in core.report(0).members {
                if m.node != id && !m.up && self.nodes.get(&m.node).is_some_and(|p| p.core.is_some()) {
                    out.push((id, m.node));
                }
            }
        }
        out
    }

    /// The ring of the one stable layout every running node holds, once the operator is
    /// done (the initial ring in a run without one).
    fn settled(&self) -> Result<Ring, String> {
        let Some(admin) = &self.admin else { return Ok(self.ring.clone()) };
        if !admin.done() {
            let views: Vec<String> = self
                .nodes
                .iter()
                .filter_map(|(id, n)| n.core.as_ref().map(|c| (id, c.membership())))
                .map(|(id, i)| {
                    let stuck: Vec<String> = i
                        .transfers
                        .iter()
                        .filter(|(t, _)| !t.done)
                        .map(|(t, _)| format!("from {}: {}", t.from, t.last_error.as_deref().unwrap_or("pending")))
                        .collect();
                    format!(
                        "node {id}: epoch {} {:?} {:?} transfers left [{}]",
                        i.cluster.epoch(),
                        i.phase,
                        i.cluster.progress_list(),
                        stuck.join("; ")
                    )
                })
                .collect();
            return Err(format!("the operator's changes did not all settle: {}", views.join(" | ")));
        }
        let mut layout: Option<(NodeId, Layout)> = None;
        for (&id, n) in &self.nodes {
            let Some(core) = &n.core else { continue };
            let info = core.membership();
            if info.cluster.old().is_some() {
                return Err(format!("node {id} is still in the change to epoch {}", info.cluster.epoch()));
            }
            match &layout {
                Some((other, l)) if l != info.cluster.newest() => {
                    return Err(format!(
                        "node {id} holds layout epoch {}, node {other} epoch {}",
                        info.cluster.epoch(),
                        l.epoch
                    ));
                }
                Some(_) => {}
                None => layout = Some((id, info.cluster.newest().clone())),
            }
        }
        let (_, layout) = layout.ok_or("no node runs")?;
        layout.ring().map_err(|e| format!("the final layout: {e}"))
    }

    /// What each home replica of `key` holds now, and the tombstones of it purged so far.
    fn final_key(&self, ring: &Ring, key: &[u8]) -> FinalKey {
        let replicas = ring
            .preference_list(key)
            .iter()
            .map(|id| (*id, self.nodes[id].disk.borrow().current().value(key).cloned()))
            .collect();
        let purged = self.nodes.values().flat_map(|n| n.disk.borrow().purged.get(key).cloned()).flatten().collect();
        if std::env::var("QKV_SIM_FINAL").is_ok_and(|k| k.as_bytes() == key) {
            eprintln!("final {:?}: {replicas:?} purged {purged:?}", String::from_utf8_lossy(key));
        }
        FinalKey { replicas, purged, homes_ever: vec![] }
    }

    /// Every key's home replicas agree ([`FinalKey::agrees`]).
    fn converged(&self, keys: &BTreeSet<Vec<u8>>) -> bool {
        let Ok(ring) = self.settled() else { return false };
        keys.iter().all(|key| self.final_key(&ring, key).agrees())
    }
}

/// Every state a store holds, its keys' and its hints'.
fn held_states(c: &Contents) -> Vec<(Vec<u8>, DvvSet)> {
    c.entries()
        .map(|(k, s)| (k.to_vec(), s.clone()))
        .chain(c.hints.iter().map(|((_, k), h)| (k.clone(), h.set.clone())))
        .collect()
}

/// The join of several `Seen`s: a dot is covered by it when one of them covers it.
fn join_all(all: impl Iterator<Item = Seen>) -> Seen {
    let mut out = Seen::new();
    for s in all {
        out.vv.join(&s.vv);
        out.dots.extend(s.dots);
    }
    out.normalize();
    out
}
