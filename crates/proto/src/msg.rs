//! Wire messages. One request and one response per QUIC bidirectional stream.
//!
//! Client requests may come from client or node certificates; `Replica*` and
//! `Ping` requests only from node certificates.

use serde::{Deserialize, Serialize};

use crate::{Context, Dot, DvvSet, Error, Level, NodeId};

/// A request, client-to-node or node-to-node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Request {
    /// Read a key at level `r`.
    Get(GetRequest),
    /// Write (`value: Some`) or delete (`value: None`) a key at level `w`.
    Put(PutRequest),
    /// The node's view of the cluster.
    Status,
    /// The node's request and replication statistics.
    Stats,
    /// The preference list of a key.
    Ring {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
    /// What each home replica holds for a key, unmerged and unrepaired.
    Inspect {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
    /// Node-to-node anti-entropy, step 1: the sender's root hash of each range it
    /// shares with the receiver. The answer lists the receiver's leaves of every
    /// range whose root differs.
    AaeRoots {
        /// The ring both sides must be on ([`crate`] users: `Ring::fingerprint`).
        fingerprint: u64,
        /// (range, root).
        ranges: Vec<(u32, u64)>,
    },
    /// Node-to-node anti-entropy, step 2: the sender's keys and digests in some
    /// leaves of a range. The receiver answers with its states of the keys that
    /// differ or that the sender lacks, and the keys it lacks itself.
    AaeCompare {
        /// The ring both sides must be on.
        fingerprint: u64,
        /// The range.
        range: u32,
        /// The leaves compared.
        leaves: Vec<u32>,
        /// The sender's keys in those leaves, with their digests.
        entries: Vec<KeyDigest>,
    },
    /// Node-to-node: this replica's state of a key.
    ReplicaGet {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
    /// Node-to-node: the digest of this replica's state of a key (a checked read
    /// compares it with its answer; answered with [`Response::Digest`]).
    ReplicaDigest {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
    /// Node-to-node: merge this state into the replica's and persist before acking.
    ReplicaPut {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// The state to merge.
        set: DvvSet,
    },
    /// Node-to-node: store this state as a hint for `owner`, a home replica that is down.
    ReplicaHint {
        /// The home replica the write is meant for.
        owner: NodeId,
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// The state to hold and hand off.
        set: DvvSet,
    },
    /// Node-to-node: hinted handoff; merge every item and persist before acking.
    ReplicaPutBatch {
        /// Keys and states.
        items: Vec<KeyState>,
        /// Ack only once the items are fdatasynced, whatever the receiver's persist
        /// policy (an old owner's hand-over: it deletes its copy on the ack).
        #[serde(default)]
        sync: bool,
    },
    /// Node-to-node: the hints this node holds for a key, for any owner.
    HintGet {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
    /// Node-to-node liveness probe, carrying the sender's heartbeat gossip.
    Ping {
        /// The sender.
        from: NodeId,
        /// The freshest heartbeat the sender knows for each node.
        gossip: Vec<Heartbeat>,
        /// The sender's layout epoch and the progress of its change.
        #[serde(default)]
        view: LayoutView,
    },
    /// Node-to-node: the receiver's cluster layout (answered with [`Response::Layout`]).
    LayoutGet,
    /// Node-to-node: the sender's cluster layout, which the receiver takes when newer.
    LayoutPush {
        /// The encoded cluster (`qkv_core::membership::Cluster`).
        #[serde(with = "serde_bytes")]
        cluster: Vec<u8>,
    },
    /// Node-to-node: phase 1 of committing the layout of `epoch`.
    LayoutPrepare {
        /// The epoch being committed.
        epoch: u64,
        /// The proposal number (round, proposer).
        ballot: (u64, NodeId),
    },
    /// Node-to-node: phase 2 of committing the layout of `epoch`.
    LayoutAccept {
        /// The epoch being committed.
        epoch: u64,
        /// The proposal number (round, proposer).
        ballot: (u64, NodeId),
        /// The encoded layout (`qkv_core::layout::Layout`).
        #[serde(with = "serde_bytes")]
        layout: Vec<u8>,
    },
    /// Node-to-node: a page of the receiver's states of keys with tokens in
    /// `lo + 1 ..= hi` (wrapping; `lo == hi`: the whole ring), from `from` on, for a
    /// node gaining the range in the layout of `epoch`.
    RangeFetch {
        /// The epoch whose transition the range moves in.
        epoch: u64,
        /// Start (exclusive).
        lo: u64,
        /// End (inclusive).
        hi: u64,
        /// Resume at this (token, key), inclusive; `None`: from the start.
        from: Option<RangeCursor>,
        /// Most bytes of states in the page.
        bytes_max: u32,
    },
    /// Membership administration (stage, plan, commit, abort, show).
    Cluster(ClusterAdmin),
    /// Test-only fault switch (refused unless the node enables `fault_injection`):
    /// cut this node off from the listed nodes, both ways; an empty list heals.
    Fault {
        /// Nodes to cut off.
        isolate: Vec<NodeId>,
    },
}

/// The longest deadline a request may carry, and the longest a node's default may
/// be (`request_timeout_ms`): the one definition the config, the core, the driver,
/// the client and the CLI check against.
pub const REQUEST_TIMEOUT_MS_MAX: u64 = 60_000;

/// Who answers a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AnsweredBy {
    /// The sans-IO core: reads, writes, replica traffic, liveness.
    Core,
    /// The node's driver: requests about the node itself (status, stats, placement, faults).
    Driver,
}

/// Who may send a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sender {
    /// Anyone with a certificate of the cluster: clients and nodes.
    Anyone,
    /// Only a node (a certificate with the node role): replica traffic and liveness.
    Node,
    /// An operator (a certificate with the admin role) or a node: membership changes.
    Admin,
}

impl Sender {
    /// Why a peer without the role is refused, in words.
    pub fn refusal(self) -> &'static str {
        match self {
            Sender::Anyone => "",
            Sender::Node => "replica traffic needs a node certificate",
            Sender::Admin => {
                "membership changes need an admin certificate (`qkv certs --admins NAME`; client certificates may only read the layout)"
            }
        }
    }
}

impl Request {
    /// Who answers it: the core, or the node's driver around it (requests about the
    /// node itself, which the sans-IO core does not take).
    pub fn answered_by(&self) -> AnsweredBy {
        match self {
            Request::Status | Request::Stats | Request::Ring { .. } | Request::Fault { .. } => AnsweredBy::Driver,
            Request::Get(_)
            | Request::Put(_)
            | Request::Inspect { .. }
            | Request::AaeRoots { .. }
            | Request::AaeCompare { .. }
            | Request::ReplicaGet { .. }
            | Request::ReplicaDigest { .. }
            | Request::ReplicaPut { .. }
            | Request::ReplicaHint { .. }
            | Request::ReplicaPutBatch { .. }
            | Request::HintGet { .. }
            | Request::Ping { .. }
            | Request::LayoutGet
            | Request::LayoutPush { .. }
            | Request::LayoutPrepare { .. }
            | Request::LayoutAccept { .. }
            | Request::RangeFetch { .. }
            | Request::Cluster(_) => AnsweredBy::Core,
        }
    }

    /// Show `f` every DVV set the request carries: what a sender checks before it
    /// encodes them, so a broken state trips where it was made, not where it lands.
    pub fn for_each_state(&self, mut f: impl FnMut(&DvvSet)) {
        match self {
            Request::ReplicaPut { set, .. } | Request::ReplicaHint { set, .. } => f(set),
            Request::ReplicaPutBatch { items, .. } => items.iter().for_each(|i| f(&i.set)),
            _ => {}
        }
    }

    /// Who may send this request. Every variant says so here, so a new message
    /// cannot be added without deciding it; a node checks it against the peer's
    /// certificate before it serves anything (`qkv_transport::server::allowed`).
    pub fn sender(&self) -> Sender {
        match self {
            Request::Get(_)
            | Request::Put(_)
            | Request::Status
            | Request::Stats
            | Request::Ring { .. }
            | Request::Inspect { .. }
            | Request::Cluster(ClusterAdmin::Show | ClusterAdmin::Plan)
            | Request::Fault { .. } => Sender::Anyone,
            Request::Cluster(
                ClusterAdmin::Stage(_) | ClusterAdmin::Commit | ClusterAdmin::Abort | ClusterAdmin::Forget { .. },
            ) => Sender::Admin,
            Request::AaeRoots { .. }
            | Request::AaeCompare { .. }
            | Request::ReplicaGet { .. }
            | Request::ReplicaDigest { .. }
            | Request::ReplicaPut { .. }
            | Request::ReplicaHint { .. }
            | Request::ReplicaPutBatch { .. }
            | Request::HintGet { .. }
            | Request::Ping { .. }
            | Request::LayoutGet
            | Request::LayoutPush { .. }
            | Request::LayoutPrepare { .. }
            | Request::LayoutAccept { .. }
            | Request::RangeFetch { .. } => Sender::Node,
        }
    }
}

impl Response {
    /// Show `f` every DVV set the answer carries (see [`Request::for_each_state`]).
    pub fn for_each_state(&self, mut f: impl FnMut(&DvvSet)) {
        match self {
            Response::ReplicaState(Some(s)) => f(s),
            Response::Hints(held) => held.iter().for_each(|h| f(&h.1)),
            Response::AaeCompared(c) => c.theirs.iter().for_each(|t| f(&t.set)),
            Response::RangePage { items, .. } => items.iter().for_each(|i| f(&i.set)),
            Response::Inspect(i) => {
                i.replicas.iter().filter_map(|r| r.1.as_ref().ok().and_then(Option::as_ref)).for_each(&mut f);
                i.hints.iter().for_each(|h| f(&h.2));
            }
            _ => {}
        }
    }
}

/// Where a range fetch resumes: at this key of this token (inclusive).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RangeCursor {
    /// The key's token.
    pub token: u64,
    /// The key.
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
}

/// A node's layout epoch and the progress of its change, as pings carry them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayoutView {
    /// The newest layout epoch the node holds (0: none yet).
    pub epoch: u64,
    /// Whether its transition to that epoch is still running.
    pub moving: bool,
    /// Per participant: (node, acked, synced, reading) epochs.
    pub progress: Vec<(NodeId, u64, u64, u64)>,
    /// Per participant: (node, dropped) epochs (absent from earlier releases).
    #[serde(default)]
    pub dropped: Vec<(NodeId, u64)>,
    /// Members forgotten (`qkv cluster forget`; absent from earlier releases).
    #[serde(default)]
    pub lost: Vec<NodeId>,
}

/// A membership change to stage.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClusterChange {
    /// A new node joins.
    Join {
        /// Its id.
        id: NodeId,
        /// Its peer address.
        addr: String,
    },
    /// A member leaves; its ranges go to the others.
    Leave {
        /// The member.
        id: NodeId,
    },
    /// A new node takes a member's place (a dead one's: nothing is fetched from it).
    Replace {
        /// The member replaced.
        old: NodeId,
        /// The new node's id.
        new: NodeId,
        /// The new node's peer address.
        addr: String,
    },
}

/// Membership administration, answered with [`Response::ClusterInfo`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClusterAdmin {
    /// The layout, the staged changes and any transfers.
    Show,
    /// Stage a change on the answering node (kept until commit or abort).
    Stage(ClusterChange),
    /// The plan of the staged changes: ownership before and after, ranges that move, warnings.
    Plan,
    /// Commit the staged changes as the next epoch.
    Commit,
    /// Drop the staged changes.
    Abort,
    /// Declare a member gone for good, so no step of a change waits for it and nothing
    /// is routed to it (it is then replaced or removed as usual).
    Forget {
        /// The member.
        id: NodeId,
    },
}

/// A key and its state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KeyState {
    /// The key.
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// Its state.
    pub set: DvvSet,
}

/// A node's heartbeat: its incarnation (boot count) and a counter within it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The node.
    pub node: NodeId,
    /// Bumped at every start of the node.
    pub incarnation: u64,
    /// Bumped at every ping round.
    pub counter: u64,
}

/// A read.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GetRequest {
    /// The key.
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// Replies needed.
    pub r: Level,
    /// Only home replicas count.
    pub strict: bool,
    /// Deadline for the request, from its arrival at the coordinator.
    pub timeout_ms: Option<u32>,
    /// A session read: the answer must be at least as new as this (what the session
    /// wrote and saw of the key). Replicas past R are asked until one is; none being
    /// is [`crate::Error::Behind`]. A context is untrusted input: one the cluster did
    /// not issue for this key is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<SessionFloor>,
}

/// What a session knows of one key: a read in the session returns nothing older.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionFloor {
    /// Everything the session wrote and saw of the key (issued by the cluster).
    pub context: Context,
    /// The session's latest view of the key was "no value" (its delete, or a read
    /// that found nothing): an answer with no value is then as new as it needs to be,
    /// even one whose history lacks the delete (its tombstone may have been purged).
    pub deleted: bool,
}

/// A write or delete.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PutRequest {
    /// The key.
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// The value; `None` deletes (writes a tombstone).
    #[serde(with = "serde_bytes")]
    pub value: Option<Vec<u8>>,
    /// The causal context from an earlier read; empty for a blind write.
    pub context: Context,
    /// Acks needed.
    pub w: Level,
    /// Only home replicas count.
    pub strict: bool,
    /// Deadline for the request, from its arrival at the coordinator.
    pub timeout_ms: Option<u32>,
    /// Set by a node that forwarded the write to a replica; a forwarded write is not forwarded again.
    pub forwarded: bool,
    /// The write's identity, the same on every retry of it (the client draws it at
    /// random). A coordinator holding a sibling of this id answers with it instead of
    /// writing again, and replicas merging two siblings of one id keep one: a retry
    /// never becomes a second sibling.
    #[serde(default)]
    pub write_id: Option<u64>,
    /// A session write: what the session knew of the key before it (issued by the
    /// cluster; one it did not issue is refused). The answer's
    /// [`PutReply::session`] then covers both, for the session's next reads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<Context>,
}

/// A response to a [`Request`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Response {
    /// The request failed.
    Error(Error),
    /// A read's answer.
    Get(GetReply),
    /// A write's answer.
    Put(PutReply),
    /// A node's view of the cluster.
    Status(StatusReply),
    /// A node's statistics.
    Stats(StatsReply),
    /// A key's preference list.
    Ring(RingReply),
    /// Each home replica's state of a key.
    Inspect(InspectReply),
    /// A replica's state of a key (`None`: never written).
    ReplicaState(Option<DvvSet>),
    /// A replica merged and persisted the state.
    ReplicaAck,
    /// The digest of a replica's state of a key ([`Request::ReplicaDigest`]).
    Digest(u64),
    /// A replica merged and persisted a batch ([`Request::ReplicaPutBatch`]) but for
    /// the items at these indices, which it refused because the key's merged state
    /// would pass twice the per-key limit (the sender keeps them and tries again
    /// later; the rest are delivered).
    ReplicaBatchAck {
        /// Indices into the batch of the items not merged.
        refused: Vec<u32>,
    },
    /// Liveness answer, with the answering node's heartbeat gossip.
    Pong {
        /// The answering node.
        from: NodeId,
        /// The freshest heartbeat it knows for each node.
        gossip: Vec<Heartbeat>,
        /// Its layout epoch and the progress of its change.
        #[serde(default)]
        view: LayoutView,
    },
    /// A node's cluster layout (encoded `qkv_core::membership::Cluster`).
    Layout(serde_bytes::ByteBuf),
    /// A vote in a layout commit (encoded `qkv_core::membership::Vote`).
    LayoutVote(serde_bytes::ByteBuf),
    /// A page of a range fetch: states, and where to resume (`None`: the range is done).
    RangePage {
        /// Keys and states, in token order.
        items: Vec<KeyState>,
        /// Resume at this; `None`: nothing follows.
        next: Option<RangeCursor>,
    },
    /// Membership: the layout, staged changes, plan and transfers (encoded
    /// `qkv_core::membership::ClusterInfo`; the CLI prints it).
    ClusterInfo(serde_bytes::ByteBuf),
    /// The hints a node holds for a key: (owner, state, age in ms).
    Hints(Vec<(NodeId, DvvSet, u64)>),
    /// Anti-entropy: the leaves of each range whose root differed.
    AaeLeaves(Vec<(u32, Vec<u64>)>),
    /// Anti-entropy: the outcome of a leaf comparison.
    AaeCompared(AaeCompared),
}

/// A key and the digest of one replica's state of it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyDigest {
    /// The key.
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// The digest of its state.
    pub digest: u64,
}

/// The answer to [`Request::AaeCompare`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AaeCompared {
    /// The receiver's states of keys whose digests differ, or that the sender lacks.
    pub theirs: Vec<KeyState>,
    /// Keys the sender listed that the receiver lacks.
    #[serde(with = "serde_bytes_vec")]
    pub missing: Vec<Vec<u8>>,
    /// More differing states did not fit: compare these leaves again.
    pub more: bool,
    /// The receiver's anti-entropy pace is spent: compare again no sooner than this, ms.
    pub wait_ms: u64,
}

mod serde_bytes_vec {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use serde_bytes::ByteBuf;

    pub fn serialize<S: Serializer>(v: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
        let bufs: Vec<&serde_bytes::Bytes> = v.iter().map(|b| serde_bytes::Bytes::new(b)).collect();
        bufs.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
        Ok(Vec::<ByteBuf>::deserialize(d)?.into_iter().map(ByteBuf::into_vec).collect())
    }
}

/// A read's answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GetReply {
    /// The sibling values (tombstones left out); empty when not found.
    pub values: Vec<serde_bytes::ByteBuf>,
    /// False when there is no live value.
    pub found: bool,
    /// The context to pass to the next write of this key.
    pub context: Context,
    /// Replicas that answered before the reply.
    pub replied: u32,
}

/// A write's answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PutReply {
    /// What the writer has now seen: its own context plus this write, never a concurrent
    /// write it did not see (dots of its context the coordinator already holds are left
    /// out: the new state carries them). Pass it to a later write to replace this value.
    pub context: Context,
    /// The write's dot (its version), for tracing and checkers.
    pub dot: Dot,
    /// Home replicas that acknowledged before the answer.
    pub home_acks: Vec<NodeId>,
    /// Stand-ins that acknowledged before the answer, each with the home replica it holds the write for.
    pub standin_acks: Vec<(NodeId, NodeId)>,
    /// The node that coordinated the write.
    pub coordinator: NodeId,
    /// A session write's new floor: the session's earlier knowledge of the key plus
    /// this write (not a context to write with: it may name siblings the write did
    /// not replace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<Context>,
}

/// One node's view of the cluster.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusReply {
    /// The answering node.
    pub node: NodeId,
    /// Replication factor.
    pub n: u32,
    /// Virtual nodes per node.
    pub vnodes: u32,
    /// Every member and how this node sees it.
    pub members: Vec<MemberStatus>,
    /// Read repairs this node sent since start.
    pub read_repairs: u64,
    /// The hints this node holds: the replication lag it owes others.
    pub hints: HintStatus,
    /// Anti-entropy progress.
    pub aae: AaeStatus,
    /// The per-key limits and what they refused.
    #[serde(default)]
    pub key_limits: KeyLimitStatus,
    /// Reads (R below N) that also compared the digests of the replicas they did not
    /// ask, since start (a sample: one in `qkv_core::router::READ_CHECK_EVERY`).
    #[serde(default)]
    pub read_checks: u64,
    /// Of those, reads that found a replica holding something else (fetched and repaired).
    #[serde(default)]
    pub read_checks_differed: u64,
}

/// The bound on one key's state, and the writes it turned away.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct KeyLimitStatus {
    /// Most siblings a write may leave in a key.
    pub siblings_max: u64,
    /// Most bytes a write may leave in a key.
    pub bytes_max: u64,
    /// Client writes this node refused as coordinator since start (`key full`).
    pub writes_refused: u64,
    /// Replica merges refused since start (past twice the limits).
    pub merges_refused: u64,
}

/// A node's anti-entropy progress.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AaeStatus {
    /// Whether exchanges run at all.
    pub enabled: bool,
    /// Ranges whose last comparison with every peer found them equal.
    pub ranges_in_sync: u32,
    /// Ranges not (yet) found equal with every peer.
    pub ranges_out_of_sync: u32,
    /// Exchanges completed since start.
    pub exchanges: u64,
    /// Exchanges that failed (peer unreachable, ring mismatch, ...).
    pub exchanges_failed: u64,
    /// Keys this node changed, or a peer acknowledged, through anti-entropy.
    pub keys_repaired: u64,
    /// States received and sent by exchanges.
    pub keys_exchanged: u64,
    /// Bytes of states received and sent by exchanges.
    pub bytes_exchanged: u64,
    /// Tombstones held, waiting for every home replica and the grace delay.
    pub tombstones_pending: u64,
    /// Tombstones purged since start.
    pub tombstones_purged: u64,
    /// The in-memory tombstone index was full and is being rebuilt from the store.
    #[serde(default)]
    pub tombstones_index_incomplete: bool,
    /// Purge records held (what purged tombstones had seen, for a grace period).
    #[serde(default)]
    pub purge_records: u64,
    /// Per range and peer: when an exchange last completed (ms ago) and whether the
    /// range was equal at its last comparison.
    pub pairs: Vec<AaePair>,
}

/// One (range, peer) pair's anti-entropy state.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AaePair {
    /// The range.
    pub range: u32,
    /// The peer.
    pub peer: NodeId,
    /// Since the last completed exchange, ms (`None`: never).
    pub last_exchange_ago_ms: Option<u64>,
    /// Whether the last comparison found the range equal.
    pub in_sync: bool,
}

/// The hints one node holds, in total and per owner.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HintStatus {
    /// Hints held.
    pub count: u64,
    /// Their approximate bytes (keys + values + per-hint overhead).
    pub bytes: u64,
    /// Hints refused since start because a limit was reached.
    pub refused: u64,
    /// Hints handed off (acknowledged by their owner) since start.
    pub handed_off: u64,
    /// Hints handed to another home replica of their key since start: the owner
    /// stayed down past half the tombstone grace.
    #[serde(default)]
    pub redirected: u64,
    /// Hints dropped since start, older than the tombstone grace.
    #[serde(default)]
    pub expired: u64,
    /// Limit on all hints, bytes.
    pub bytes_max: u64,
    /// Limit per owner, bytes.
    pub owner_bytes_max: u64,
    /// Per owner with hints pending or handed off recently.
    pub owners: Vec<OwnerHints>,
}

/// The hints one node holds for one owner.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct OwnerHints {
    /// The home replica the hints are for.
    pub owner: NodeId,
    /// Whether the holder sees the owner up.
    pub owner_up: bool,
    /// Hints pending.
    pub count: u64,
    /// Their approximate bytes.
    pub bytes: u64,
    /// Age of the oldest pending hint, ms.
    pub oldest_age_ms: u64,
    /// Handoff rate over the last seconds, hints/s.
    pub rate_hints_per_s: f64,
    /// Handoff rate over the last seconds, bytes/s.
    pub rate_bytes_per_s: f64,
    /// Estimated time to drain at that rate, ms (`None` when nothing moves).
    pub drain_eta_ms: Option<u64>,
}

/// A member as seen by one node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MemberStatus {
    /// Node id.
    pub node: NodeId,
    /// Its address.
    pub addr: String,
    /// Up as this node sees it.
    pub up: bool,
    /// Share of the key space it is a home replica for (0.0..=1.0, summing to N over members).
    pub ownership: f64,
}

/// A key's preference list.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RingReply {
    /// Home replicas, in preference order, with their addresses.
    pub replicas: Vec<(NodeId, String)>,
}

/// Each home replica's state of a key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InspectReply {
    /// Per home replica: its state, or why it could not be read.
    pub replicas: Vec<(NodeId, Result<Option<DvvSet>, Error>)>,
    /// Hints held for the key by other nodes: (stand-in, owner, state, age ms).
    pub hints: Vec<(NodeId, NodeId, DvvSet, u64)>,
}

/// Percentiles of a distribution.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest.
    pub max: f64,
}

/// Requests the node coordinated for one operation, level and mode.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct OpStats {
    /// `get`, `put` or `delete`.
    pub op: String,
    /// The level asked for.
    pub level: String,
    /// Strict or sloppy.
    pub strict: bool,
    /// Errors among them.
    pub errors: u64,
    /// Latency as seen by the node, microseconds.
    pub latency_us: Percentiles,
}

/// A node's statistics.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StatsReply {
    /// The node.
    pub node: NodeId,
    /// Milliseconds since it started.
    pub uptime_ms: u64,
    /// Per operation, level and mode.
    pub ops: Vec<OpStats>,
    /// Errors by kind (`unavailable`, `timeout`, ...).
    pub errors: Vec<(String, u64)>,
    /// Read repairs acknowledged.
    pub read_repairs: u64,
    /// Siblings per successful read.
    pub siblings_per_read: Percentiles,
    /// Time from a write's ack until its last home replica held it, ms (writes this node coordinated).
    pub replication_lag_ms: Percentiles,
    /// Writes acked but not yet on every home replica.
    pub replication_lag_pending: u64,
    /// Hints held, and their bytes.
    pub hints: (u64, u64),
    /// Bytes on disk.
    pub storage_bytes: u64,
    /// Where the node serves Prometheus metrics, if it does.
    pub metrics_addr: Option<String>,
    /// Its latest round trips to each peer (for `qkv pbs`).
    #[serde(default)]
    pub latency: Vec<PeerLatency>,
    /// How long its latest replica writes waited between arriving and being applied, µs
    /// (for `qkv pbs`: a replica's part of a write's way there).
    #[serde(default)]
    pub replica_write_wait_us: Vec<u32>,
}

/// One node's latest answered round trips to one peer, in µs (see `qkv_core::pbs`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerLatency {
    /// The peer.
    pub peer: NodeId,
    /// Replica writes.
    #[serde(default)]
    pub write_us: Vec<u32>,
    /// Replica reads and digests.
    #[serde(default)]
    pub read_us: Vec<u32>,
}
