//! What the core and its driver exchange: the config, the [`Store`] the core
//! keeps its data in, the [`Output`]s the driver carries out, and the ids and
//! timing constants both sides use. See the [`super`] docs for the protocol.

use qkv_proto::{DvvSet, Error, NodeId, Request, Response, Secret, Seen};

use super::AaeConfig;
use crate::hints::HintLimits;
use crate::replica::Limits;
use crate::ring::RingError;

/// Identifies a request this node must answer (chosen by the driver).
pub type ReqId = u64;
/// Identifies a request this node sent (chosen by the core).
pub type RpcId = u64;

pub use qkv_proto::msg::REQUEST_TIMEOUT_MS_MAX;
/// Extra time a forwarding node waits beyond the request deadline for the coordinator.
pub const FORWARD_MARGIN_MS: u64 = 500;
/// How often hinted handoff looks for work.
pub const HANDOFF_INTERVAL_MS: u64 = 100;
/// Default for [`CoreConfig::transfer_bytes_per_s`].
pub const TRANSFER_BYTES_PER_S_DEFAULT: u64 = 32 << 20;
/// Deadline of one handoff batch.
pub const HANDOFF_TIMEOUT_MS: u64 = 5_000;

/// A write held by a stand-in for a home replica that was down.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Hint {
    /// The merged state to hand off.
    pub set: DvvSet,
    /// When the stand-in last took a write into this hint (wall clock, ms): its age,
    /// for redirect and expiry, counts from its newest write, so every write a
    /// stand-in acknowledged is kept at least a grace (see `handoff.rs`).
    pub created_ms: u64,
}

/// A hint's identity and size, as listed at start to rebuild the index.
#[derive(Clone, Debug, PartialEq)]
pub struct HintMeta {
    /// The home replica it is for.
    pub owner: NodeId,
    /// The key.
    pub key: Vec<u8>,
    /// Its approximate size.
    pub bytes: u64,
    /// When it last took a write (wall clock, ms).
    pub created_ms: u64,
}

/// The node's durable state: key → state (`data`, kept in token order: see
/// [`Store::scan`]), (owner, key) → hint (`hints`) and the actor's counter lease.
pub trait Store {
    /// The state of `key`, if any.
    fn get(&self, key: &[u8]) -> Result<Option<DvvSet>, Error>;
    /// Replace the state of `key`. Durable only after the next completed `Flush`.
    fn put(&mut self, key: &[u8], set: &DvvSet) -> Result<(), Error>;
    /// Drop the state of `key` (tombstone GC). Durable only after the next completed `Flush`.
    fn delete(&mut self, key: &[u8]) -> Result<(), Error>;
    /// At most `limit` keys and states, ordered by ([`token`] of the key, key), from
    /// `from` (inclusive) while the token is at most `to`.
    ///
    /// [`token`]: crate::ring::token
    fn scan(&self, from: (u64, &[u8]), to: u64, limit: usize) -> Result<Vec<(Vec<u8>, DvvSet)>, Error>;
    /// The last recorded counter lease: no dot this node's actor minted is above it (0: none).
    fn counter_lease(&self) -> Result<u64, Error>;
    /// Record a counter lease. Durable only after the next completed `Flush`.
    fn put_counter_lease(&mut self, lease: u64) -> Result<(), Error>;
    /// The hint for `owner` and `key`, if any.
    fn get_hint(&self, owner: NodeId, key: &[u8]) -> Result<Option<Hint>, Error>;
    /// Replace the hint for `owner` and `key`. Durable only after the next completed `Flush`.
    fn put_hint(&mut self, owner: NodeId, key: &[u8], hint: &Hint) -> Result<(), Error>;
    /// Drop the hint for `owner` and `key`.
    fn delete_hint(&mut self, owner: NodeId, key: &[u8]) -> Result<(), Error>;
    /// Every hint's identity and size (read once, at start).
    fn scan_hints(&self) -> Result<Vec<HintMeta>, Error>;
    /// Record that `key`'s tombstone was purged, with everything it had seen. Durable
    /// only after the next completed `Flush` (the purge itself is, too).
    fn put_purged(&mut self, key: &[u8], seen: &Seen) -> Result<(), Error>;
    /// Forget a purge record (expired).
    fn delete_purged(&mut self, key: &[u8]) -> Result<(), Error>;
    /// Every purge record (read once, at start).
    fn scan_purged(&self) -> Result<Vec<(Vec<u8>, Seen)>, Error>;
    /// A membership record (`cluster`, `acceptor`, `staged`, `transfers`), if any.
    fn get_meta(&self, name: &str) -> Result<Option<Vec<u8>>, Error>;
    /// Replace a membership record. Durable only after the next completed `Flush`.
    fn put_meta(&mut self, name: &str, value: &[u8]) -> Result<(), Error>;
}

/// Deliberate bugs, so the simulator can show its checker catches them. They take
/// effect only in a build with the feature `bug-variants` (the simulator's tests
/// and `qkv-sim --features bugs`): without it every check of them is a constant
/// `false` the compiler removes, and a config that sets one is refused at start.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bugs {
    /// Keep only the newest sibling on every write (last-writer-wins).
    pub lww: bool,
    /// Acknowledge writes before they are flushed.
    pub ack_before_flush: bool,
    /// Let stand-in acks count toward W even for strict writes.
    pub strict_counts_standins: bool,
    /// Purge tombstones after the grace delay alone, without knowing every home replica
    /// holds them, and forget them at once (the naive GC of a timer).
    pub gc_unconfirmed: bool,
    /// Persist a counter lease only with the write that crosses it, without a sync.
    pub lease_not_durable: bool,
    /// Give a put the old context: the writer's vector joined with the new dot, which
    /// claims concurrent writes of the same coordinator it never saw.
    pub vv_context: bool,
    /// During a layout change, read from the new home set at once, before its new
    /// owners fetched their ranges.
    pub early_read_switch: bool,
    /// During a layout change, write to the new home set alone.
    pub no_joint_writes: bool,
    /// Keep the actor when the node gains ranges: its writes to a key whose state it
    /// dropped or cleared claim its own earlier dots of the key, held elsewhere.
    pub keep_actor: bool,
}

impl CoreConfig {
    /// The deliberate bugs in force: none, as a constant, in a build without `bug-variants`.
    #[inline]
    pub(crate) fn bugs(&self) -> Bugs {
        if cfg!(feature = "bug-variants") { self.bugs } else { Bugs::default() }
    }
}

/// What a node is and how it behaves.
#[derive(Clone, Debug)]
pub struct CoreConfig {
    /// This node.
    pub me: NodeId,
    /// Bumped by the driver at every start (persisted), so this run's heartbeats win.
    pub incarnation: u64,
    /// The epoch of this node's disk: drawn at random by the driver when it starts
    /// on an empty disk, then kept. With `me`, it makes the node's [`Actor`](qkv_proto::Actor).
    pub epoch: u32,
    /// The cluster layout: every member, this node included, with its address (shown
    /// in status; never dialled here) and the vnode labels it owns, and N.
    pub layout: crate::layout::Layout,
    /// Key and value limits.
    pub limits: Limits,
    /// Hint limits and handoff pace.
    pub hints: HintLimits,
    /// Default request deadline.
    pub request_timeout_ms: u64,
    /// Ping period.
    pub ping_interval_ms: u64,
    /// Time without a fresh heartbeat after which a peer is down.
    pub down_after_ms: u64,
    /// Anti-entropy and tombstone GC.
    pub aae: AaeConfig,
    /// The cluster's secret: contexts carry a MAC under it (see `qkv_proto::context`).
    pub secret: Secret,
    /// Pace of the range fetches of a membership change, bytes per second.
    pub transfer_bytes_per_s: u64,
    /// Deliberate bugs (simulator only).
    #[doc(hidden)]
    pub bugs: Bugs,
}

/// Why a core could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The ring cannot be built from the config.
    #[error(transparent)]
    Ring(#[from] RingError),
    /// The layout is not valid.
    #[error(transparent)]
    Layout(#[from] crate::layout::LayoutError),
    /// This node is not a member of the layout.
    #[error("node {0} is not a member of the cluster layout")]
    NotMember(NodeId),
    /// The config asks for deliberate bugs in a build without `bug-variants`.
    #[error("deliberate bugs need a build with the bug-variants feature")]
    BugsNotBuilt,
    /// The store could not be read at start (hints, tombstones, the counter lease, the states).
    #[error("reading the store: {0}")]
    Store(#[from] Error),
}

/// An effect the driver must carry out. See the module docs.
#[derive(Clone, Debug, PartialEq)]
pub enum Output {
    /// Send `req` to `to`; report the answer with [`Core::handle_response`](super::Core::handle_response).
    Send {
        /// Echo this back.
        rpc: RpcId,
        /// The destination.
        to: NodeId,
        /// What to send.
        req: Request,
        /// After this long the core fails the request itself.
        timeout_ms: u64,
    },
    /// Answer request `req`.
    Reply {
        /// The request being answered.
        req: ReqId,
        /// The answer.
        resp: Response,
    },
    /// Make every write so far durable, then call [`Core::handle_flushed`](super::Core::handle_flushed) with `token`.
    Flush {
        /// Echo this back.
        token: u64,
        /// Durable against power loss (fdatasync) whatever the persist policy: the core
        /// asks this for a counter lease, which must never roll back (see
        /// [`COUNTER_LEASE_STEP`](super::COUNTER_LEASE_STEP)).
        sync: bool,
    },
}

/// Counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Read repairs acknowledged by the stale replica.
    pub read_repairs: u64,
    /// Client writes refused at the per-key limit.
    pub key_writes_refused: u64,
    /// Replica merges refused at twice the per-key limit.
    pub key_merges_refused: u64,
    /// Reads that checked the digests of the replicas they did not ask.
    pub read_checks: u64,
    /// Of those, reads that found a replica differing from their answer (and repaired it).
    pub read_checks_differed: u64,
}
