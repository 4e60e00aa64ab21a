//! The router's side of [`crate::membership`]: the layouts in effect and the rings
//! built from them, layout spreading by pings, the vote that commits a change
//! (acceptor and proposer), the transfers of a transition (range fetches, paced and
//! resumable), the hand-over and drop of ranges lost, and the admin requests.

use std::collections::{BTreeMap, BTreeSet};

use qkv_proto::{ClusterAdmin, ClusterChange, Error, KeyState, LayoutView, NodeId, RangeCursor, Request, Response};

use super::{Core, HANDOFF_TIMEOUT_MS, Op, OpId, ReqId, Store};
use crate::layout::{Change, Layout, Plan};
use crate::membership::{
    Acceptor, Cluster, ClusterInfo, Phase, Progress, Round, RoundStep, Transfer, Vote, decode_layout, decode_vote,
    encode_layout, encode_vote, transfers_for,
};
use crate::pace::Bucket;
use crate::ring::{Ring, token};

/// Most changes staged at once.
pub const STAGED_MAX: usize = 64;
/// Largest page of a range fetch, bytes.
pub const FETCH_PAGE_BYTES: u32 = 512 << 10;
/// Most keys in a page of a range fetch.
pub const FETCH_PAGE_KEYS: usize = 1024;
/// Range fetches in flight at once.
pub const FETCHES_IN_FLIGHT: usize = 2;
/// Deadline of one page.
pub const FETCH_TIMEOUT_MS: u64 = 10_000;
/// Keys the drop of lost ranges reads per page (and hands over at most at once).
const DROP_PAGE: usize = 1024;
/// Keys the drop reads in one round at most, passing pages it has nothing to send of.
const DROP_SCAN_PER_ROUND: usize = 16 * DROP_PAGE;

/// Membership state of a node.
pub(super) struct Members {
    pub cluster: Cluster,
    /// The ring of the layout being left, during a transition.
    pub old_ring: Option<Ring>,
    acceptor: Acceptor,
    staged: Vec<Change>,
    /// This node's transfers for the newest epoch, with when each may next run.
    transfers: Vec<Transfer>,
    retry_at: Vec<u64>,
    busy: BTreeSet<usize>,
    /// When each forgotten member went down, as this node saw it (for the hint window:
    /// the failure detector no longer tracks it).
    lost_since: BTreeMap<NodeId, u64>,
    started_ms: u64,
    pace: Bucket,
    /// Where the drop of ranges this node lost stands (`Some`: running).
    dropping: Option<(u64, Vec<u8>)>,
    /// The epoch whose `dropping` step the running drop is (it hands keys over), or
    /// `None`: the sweep after a transition ended, which only deletes (see
    /// [`Core::drop_round`]).
    drop_epoch: Option<u64>,
    /// The epoch whose hand-over drop ran to its end (in memory: after a restart the
    /// drop runs again, which is harmless).
    drop_done: Option<u64>,
    /// The page of the drop on its way to the keys' home replicas.
    drop_page: Option<DropPage>,
    /// No page of the drop is sent again before this (after a home replica failed one).
    drop_retry_ms: u64,
    /// The epoch whose fetched data was last synced (before this node says it has it).
    data_synced: Option<u64>,
    /// The membership sync that records the last transition's end: until it completes,
    /// this node says the transition is still dropping.
    retired_at_sync: u64,
    dropped: u64,
    fetching_layout: bool,
    /// An install that failed, to run again (`true`: with the layout's write).
    install_pending: Option<bool>,
    /// Whether a peer's view of this node's epoch was heard since this node started.
    /// Until then it pushes nothing it holds ([`Core::quiet`]).
    heard: bool,
    /// The highest ballot a voter answered a commit of this node with `Outbid`: the
    /// next commit's ballot goes above it (not kept across restarts; a lost one costs
    /// one more refused round).
    outbid: (u64, NodeId),
}

/// A page of keys of ranges this node lost, sent to the keys' home replicas: deleted
/// here only once every one of them has taken it. The new owners fetched these ranges
/// and writes since reached W of them, but those W copies may since have been lost (a
/// power loss of `buffer` nodes) while this one survived: the drop must not delete the
/// last copy.
struct DropPage {
    keys: Vec<(Vec<u8>, qkv_proto::DvvSet)>,
    waiting: BTreeSet<OpId>,
    failed: bool,
    /// The drop's cursor after this page (`None`: the last page).
    next: Option<(u64, Vec<u8>)>,
}

/// Pause before a page of the drop a home replica did not take is sent again.
const DROP_RETRY_MS: u64 = 1_000;

impl Members {
    /// From the store, or `initial` on a node's first start.
    pub fn load<S: Store>(
        store: &S,
        me: NodeId,
        initial: &Layout,
        bytes_per_s: u64,
        now_ms: u64,
    ) -> Result<Members, Error> {
        let damaged = |what: &str, e: String| Error::Storage(format!("the stored {what} is damaged: {e}"));
        // A stored cluster wins once a change was committed; until then the config's
        // layout does (so a node's `peers` can still be edited as before).
        let cluster = match store.get_meta("cluster")? {
            Some(b) => {
                let stored = Cluster::decode_stored(&b, me).map_err(|e| damaged("cluster layout", e))?;
                if stored.epoch() > initial.epoch { stored } else { Cluster::new(initial.clone()) }
            }
            None => Cluster::new(initial.clone()),
        };
        let acceptor = match store.get_meta("acceptor")? {
            Some(b) => Acceptor::decode(&b).map_err(|e| damaged("layout vote", e))?,
            None => Acceptor::default(),
        };
        let staged: Vec<Change> = match store.get_meta("staged")? {
            Some(b) => rmp_serde::from_slice(&b).map_err(|e| damaged("staged changes", e.to_string()))?,
            None => vec![],
        };
        // Non-empty: the sweep after a transition's end is still to run.
        let dropping = match store.get_meta("dropping")? {
            Some(b) if !b.is_empty() => Some((0, vec![])),
            _ => None,
        };
        Ok(Members {
            cluster,
            old_ring: None,
            acceptor,
            staged,
            transfers: vec![],
            retry_at: vec![],
            busy: BTreeSet::new(),
            lost_since: BTreeMap::new(),
            started_ms: now_ms,
            pace: Bucket::new(bytes_per_s.max(1), now_ms),
            dropping,
            drop_epoch: None,
            drop_done: None,
            drop_page: None,
            drop_retry_ms: 0,
            data_synced: None,
            retired_at_sync: 0,
            dropped: 0,
            fetching_layout: false,
            install_pending: None,
            heard: false,
            outbid: (0, 0),
        })
    }
}

fn change_of(c: ClusterChange) -> Change {
    match c {
        ClusterChange::Join { id, addr } => Change::Join { id, addr },
        ClusterChange::Leave { id } => Change::Leave { id },
        ClusterChange::Replace { old, new, addr } => Change::Replace { old, new, addr },
    }
}

/// The range (lo, hi] of the ring in token order from its start: one span of
/// inclusive token bounds, or two across the wrap (lo = hi: the whole ring).
fn range_spans(lo: u64, hi: u64) -> Vec<(u64, u64)> {
    let start = lo.wrapping_add(1);
    if lo == hi {
        vec![(0, u64::MAX)]
    } else if start <= hi {
        vec![(start, hi)]
    } else {
        vec![(start, u64::MAX), (0, hi)]
    }
}

/// Whether `layout` already has `change` in it.
fn in_effect(change: &Change, layout: &Layout) -> bool {
    let member = |id: &NodeId| layout.members.contains_key(id);
    match change {
        Change::Join { id, .. } => member(id),
        Change::Leave { id } => !member(id),
        Change::Replace { old, new, .. } => member(new) && !member(old),
    }
}

fn wrong(epoch: u64, reason: impl Into<String>) -> Error {
    Error::WrongLayout { epoch, reason: reason.into() }
}

impl<S: Store> Core<S> {
    /// The ring reads are placed by: the old one until this node reads the new home set.
    pub(super) fn read_ring(&self) -> &Ring {
        match &self.members.old_ring {
            Some(_) if self.cfg.bugs().early_read_switch => &self.ring,
            Some(old) if self.members.cluster.progress_of(self.cfg.me).reading < self.members.cluster.epoch() => old,
            _ => &self.ring,
        }
    }

    /// Whether this node is a home replica of `key` in a layout in effect.
    pub(super) fn homes(&self, key: &[u8]) -> bool {
        let me = self.cfg.me;
        self.ring.preference_list(key).contains(&me)
            || self.members.old_ring.as_ref().is_some_and(|o| o.preference_list(key).contains(&me))
    }

    /// How long home replica `owner` has been down as this node sees it (`None`: up,
    /// or unknown), forgotten members included.
    pub(super) fn down_for_ms(&self, owner: NodeId) -> Option<u64> {
        self.detector
            .down_for_ms(owner, self.now_ms)
            .or_else(|| self.members.lost_since.get(&owner).map(|t| self.now_ms.saturating_sub(*t)))
    }

    /// Whether this node keeps what it holds to itself: no hint handoff, anti-entropy
    /// or drop hand-over. So does a forgotten node (the cluster no longer counts on
    /// it), and so does every node that has other live members until it has heard a
    /// peer's view of its epoch since it started: a node forgotten while it was down
    /// learns its fate before it pushes data that may predate deletes purged since.
    pub(super) fn quiet(&self) -> bool {
        let (c, me) = (&self.members.cluster, self.cfg.me);
        c.is_lost(me) || (!self.members.heard && c.live_members().iter().any(|&m| m != me))
    }

    /// Whether this node is outside the cluster (not yet joined, gone, or forgotten).
    pub(super) fn outside(&self) -> bool {
        let c = &self.members.cluster;
        !c.is_member(self.cfg.me) || c.is_lost(self.cfg.me)
    }

    pub(super) fn outside_error(&self) -> Error {
        let (c, me) = (&self.members.cluster, self.cfg.me);
        if c.is_lost(me) {
            // Its data may be older than what the cluster acknowledged since: it serves nothing.
            return wrong(
                c.epoch(),
                format!(
                    "node {me} was forgotten by the cluster (`qkv cluster forget`): it serves no requests; \
                     wipe its data directory and add it back as a new node (`qkv cluster replace {me} NEW`)"
                ),
            );
        }
        wrong(c.epoch(), format!("node {me} is not a member of the cluster (join it with `qkv cluster join`)"))
    }

    /// Start: build the rings and the transfers of the stored cluster.
    pub(super) fn start_membership(&mut self) -> Result<(), Error> {
        if self.members.cluster.encode() != self.store.get_meta("cluster")?.unwrap_or_default() {
            self.store.put_meta("cluster", &self.members.cluster.encode())?;
        }
        self.install(false)
    }

    /// The cluster changed: rings, peers, trees, hints and transfers follow it. If a
    /// step fails (the store), it is run again every round until it succeeds, and
    /// the transition takes no step meanwhile: a node holding a cluster whose rings it
    /// has not built would route, refuse and drop by the layout before.
    fn install(&mut self, persist: bool) -> Result<(), Error> {
        let retry = self.members.install_pending.is_some();
        let persist = persist || self.members.install_pending == Some(true);
        self.members.install_pending = Some(persist);
        self.install_steps(persist, retry)?;
        self.members.install_pending = None;
        Ok(())
    }

    fn install_steps(&mut self, persist: bool, retry: bool) -> Result<(), Error> {
        // The layout first: a step below that fails must not leave it unwritten.
        if persist {
            self.store.put_meta("cluster", &self.members.cluster.encode())?;
            self.sync_membership();
        }
        let cluster = &self.members.cluster;
        let ring = cluster.newest().checked_ring().map_err(|e| Error::Internal(format!("a checked layout: {e}")))?;
        self.members.old_ring = match cluster.old() {
            Some(o) => Some(o.checked_ring().map_err(|e| Error::Internal(format!("a checked layout: {e}")))?),
            None => None,
        };
        let changed = ring.fingerprint() != self.ring.fingerprint();
        if changed {
            // The trees first: the ring is swapped only once they follow it.
            self.aae.rebuild(&self.store, &ring, self.now_ms)?;
            self.ring = ring;
        }
        if changed || retry {
            self.rekey_hints()?;
        }
        // Forgotten nodes are never up: nothing is routed to them. The hint window of
        // each still runs from when it went down as this node saw it (or from now, when
        // it was never seen down, or after a restart: as for a node down).
        let now = self.now_ms;
        let lost = &self.members.cluster.lost;
        self.members.lost_since.retain(|id, _| lost.contains(id));
        for &id in lost {
            let down = self.detector.down_for_ms(id, now).unwrap_or(0);
            self.members.lost_since.entry(id).or_insert(now.saturating_sub(down));
        }
        self.detector.set_peers(self.members.cluster.live_members(), self.now_ms);
        self.setup_transfers()?;
        // A staged change the cluster already made (committed here or by another node, its
        // clearing lost in a crash) is done: left staged, it would fail every later commit.
        let newest = self.members.cluster.newest();
        let staged = self.members.staged.len();
        self.members.staged.retain(|c| !in_effect(c, newest));
        if self.members.staged.len() != staged {
            self.store.put_meta("staged", &rmp_serde::to_vec(&self.members.staged).expect("encodes"))?;
        }
        Ok(())
    }

    /// Hints whose owner is no longer a home replica of their key go to one that is
    /// (or into this node's data when it is one now): a hint's owner must be able to
    /// keep it.
    fn rekey_hints(&mut self) -> Result<(), Error> {
        let me = self.cfg.me;
        for owner in self.hints.owners_held() {
            for key in self.hints.older_than(owner, u64::MAX, usize::MAX) {
                let home = self.ring.preference_list(&key).to_vec();
                if home.contains(&owner) {
                    continue;
                }
                let Some(h) = self.store.get_hint(owner, &key)? else {
                    self.hints.remove(owner, &key);
                    continue;
                };
                if home.contains(&me) {
                    if let Err(e) = self.merge_in(&key, &h.set) {
                        tracing::warn!(owner, "taking a hint into data after a layout change: {e}; kept");
                        continue;
                    }
                } else {
                    let Some(&to) = home.first() else { continue };
                    let merged = match self.store.get_hint(to, &key)? {
                        Some(held) => held.set.merged(&h.set),
                        None => h.set.clone(),
                    };
                    let bytes = crate::hints::hint_bytes(&key, merged.value_bytes());
                    self.store.put_hint(to, &key, &crate::router::Hint { set: merged, created_ms: h.created_ms })?;
                    self.hints.record(to, &key, bytes, h.created_ms);
                }
                self.store.delete_hint(owner, &key)?;
                self.hints.remove(owner, &key);
            }
        }
        self.flush_unawaited();
        Ok(())
    }

    fn setup_transfers(&mut self) -> Result<(), Error> {
        // A fetch (or its flush) still in flight for this epoch keeps its job busy: a
        // second fetch of the same job would count its page twice.
        let epoch = self.members.cluster.epoch();
        let busy = self
            .ops
            .values()
            .filter_map(|op| match op {
                Op::Fetch { job, epoch: e } | Op::FetchFlush { job, epoch: e, .. } if *e == epoch => Some(*job),
                _ => None,
            })
            .collect();
        let m = &mut self.members;
        m.busy = busy;
        let me = self.cfg.me;
        if m.cluster.old().is_none() || !m.cluster.participants().contains(&me) {
            m.busy.clear();
            m.transfers.clear();
            m.retry_at.clear();
            return Ok(());
        }
        let mut jobs =
            transfers_for(&m.cluster, me).map_err(|e| Error::Internal(format!("the plan of a checked layout: {e}")))?;
        for (i, j) in jobs.iter_mut().enumerate() {
            if let Some(b) = self.store.get_meta(&format!("transfer.{epoch}.{i}"))?
                && let Ok(saved) = rmp_serde::from_slice::<Transfer>(&b)
                && (saved.lo, saved.hi, saved.from) == (j.lo, j.hi, j.from)
            {
                *j = saved;
            }
            // Nothing comes from a forgotten node: what it alone held is lost with it
            // (a write acknowledged by W ≥ 2 old home replicas is on another one).
            if m.cluster.is_lost(j.from) && !j.done {
                j.done = true;
                j.last_error = Some(format!("skipped: node {} was forgotten", j.from));
            }
        }
        m.retry_at = vec![0; jobs.len()];
        m.transfers = jobs;
        m.started_ms = self.now_ms;
        self.clear_gained(epoch)
    }

    /// Before a node takes any write of a range it gains, it deletes what it still
    /// holds of it: copies left from a time it was a home replica, which its drop did
    /// not reach (it skipped to a later epoch, or crashed). Tombstones purged since
    /// then would let such a copy bring deleted values back. Nothing in them is needed:
    /// every write acknowledged since the node last held the range is on the old home
    /// replicas it fetches from. Done once per epoch, recorded with the deletes (a
    /// write acknowledged after this is flushed with the record).
    fn clear_gained(&mut self, epoch: u64) -> Result<(), Error> {
        let mark = format!("cleared.{epoch}");
        if self.store.get_meta(&mark)?.is_some() {
            return Ok(());
        }
        // First, and in memory before anything that can fail: whatever fails below,
        // this node writes the ranges it gains as its new actor (a retry after a restart
        // derives the same one from the same record).
        if !self.members.transfers.is_empty() {
            self.renew_actor(epoch)?;
        }
        let mut ranges: Vec<(u64, u64)> = self.members.transfers.iter().map(|t| (t.lo, t.hi)).collect();
        ranges.dedup();
        let mut cleared = 0u64;
        for (lo, hi) in ranges {
            for (s, e) in range_spans(lo, hi) {
                let mut at: (u64, Vec<u8>) = (s, vec![]);
                loop {
                    let page = self.store.scan((at.0, &at.1), e, DROP_PAGE)?;
                    let full = page.len() == DROP_PAGE;
                    for (key, set) in page {
                        self.drop_key(&key, &set)?;
                        at = crate::ring::after(&key);
                        cleared += 1;
                    }
                    if !full {
                        break;
                    }
                }
            }
        }
        if cleared > 0 {
            tracing::info!(epoch, keys = cleared, "deleted stale copies of ranges this node gains");
        }
        self.store.put_meta(&mark, &[1])?;
        self.flush_unawaited();
        Ok(())
    }

    /// A node that gains ranges writes their keys as a new actor. A clock entry `a: c`
    /// stands for every dot of `a` up to `c` only because `a` mints each dot of a key
    /// from its own state of that key, which holds all of `a`'s earlier dots of it. A
    /// node that dropped a range (or deleted its stale copy above) no longer holds
    /// them, yet they live on at the other replicas; a dot it minted for such a key under
    /// its old actor would claim to have seen them and replace them wherever it is
    /// merged. A new actor's clock entry names only what it minted since. Recorded
    /// with the clear, in the same batch; a node that never minted a dot keeps its actor.
    /// Clocks grow by one entry per change that gives a writing node ranges.
    fn renew_actor(&mut self, epoch: u64) -> Result<(), Error> {
        if self.counter == 0 || self.cfg.bugs().keep_actor {
            return Ok(());
        }
        let old = self.actor;
        let mut x = old ^ epoch.rotate_left(32);
        let next = loop {
            x = splitmix64(x);
            let e = (x >> 32) as u32;
            if e != 0 && e != qkv_proto::actor_epoch(old) {
                break qkv_proto::actor(self.cfg.me, e);
            }
        };
        self.actor = next;
        // With the disk epoch it was derived under: a node that takes a new disk epoch
        // (a wipe, or an unclean restart that may have lost acknowledged writes) takes
        // that epoch's actor instead.
        let mut record = self.cfg.epoch.to_le_bytes().to_vec();
        record.extend_from_slice(&next.to_le_bytes());
        self.store.put_meta(ACTOR_META, &record)?;
        tracing::info!(
            epoch,
            old = %qkv_proto::actor_name(old),
            new = %qkv_proto::actor_name(next),
            "writing as a new actor: this node gains ranges it may have held before"
        );
        Ok(())
    }

    /// What pings carry.
    pub(super) fn layout_view(&self) -> LayoutView {
        let c = &self.members.cluster;
        LayoutView {
            epoch: c.epoch(),
            moving: c.old().is_some(),
            progress: c.progress_list().into_iter().map(|(id, p)| (id, p.acked, p.synced, p.reading)).collect(),
            dropped: c.progress_list().into_iter().map(|(id, p)| (id, p.dropped)).collect(),
            lost: c.lost.iter().copied().collect(),
        }
    }

    /// A peer's view, from its ping or pong: fetch a newer layout, merge progress,
    /// or tell it ours.
    pub(super) fn on_view(&mut self, from: NodeId, view: &LayoutView) {
        if self.members.cluster.merge_lost_ids(view.epoch, &view.lost) {
            tracing::warn!(from, lost = ?self.members.cluster.lost, "learned of forgotten nodes");
            if let Err(e) = self.install(true) {
                tracing::warn!("installing the cluster layout: {e}");
            }
        }
        let c = &self.members.cluster;
        if c.is_lost(from) && !view.lost.contains(&from) {
            // A forgotten node came back: it must learn it serves nothing.
            self.push_layout(from);
            return;
        }
        if view.epoch > c.epoch() || (view.epoch == c.epoch() && c.old().is_some() && !view.moving) {
            self.fetch_layout(from);
            return;
        }
        if view.epoch < c.epoch() {
            self.push_layout(from);
            return;
        }
        // A view of this epoch, its forgotten nodes merged above: this node knows its fate.
        self.members.heard = true;
        let dropped: BTreeMap<NodeId, u64> =
            view.dropped.iter().take(2 * crate::layout::MEMBERS_MAX).copied().collect();
        let entries: Vec<(NodeId, Progress)> = view
            .progress
            .iter()
            .take(2 * crate::layout::MEMBERS_MAX)
            .map(|&(id, acked, synced, reading)| {
                (id, Progress { acked, synced, reading, dropped: dropped.get(&id).copied().unwrap_or(0) })
            })
            .collect();
        if self.members.cluster.merge_progress(view.epoch, &entries) {
            self.persist_cluster();
        }
    }

    fn persist_cluster(&mut self) {
        if let Err(e) = self.store.put_meta("cluster", &self.members.cluster.encode()) {
            tracing::warn!("storing the cluster layout: {e}");
        }
        self.sync_membership();
    }

    fn fetch_layout(&mut self, from: NodeId) {
        if self.members.fetching_layout {
            return;
        }
        self.members.fetching_layout = true;
        let op = self.id();
        self.ops.insert(op, Op::LayoutFetch);
        self.send(op, from, Request::LayoutGet, self.cfg.request_timeout_ms);
    }

    fn push_layout(&mut self, to: NodeId) {
        // One push of an epoch in flight per peer: a peer behind answers each ping
        // with a view that asks for one.
        let epoch = self.members.cluster.epoch();
        if self.ops.values().any(|o| matches!(o, Op::LayoutPush { to: t, epoch: e } if *t == to && *e == epoch)) {
            return;
        }
        let op = self.id();
        self.ops.insert(op, Op::LayoutPush { to, epoch });
        self.send(op, to, Request::LayoutPush { cluster: self.members.cluster.encode() }, self.cfg.request_timeout_ms);
    }

    /// Take a cluster a peer holds, if newer.
    pub(super) fn take_cluster(&mut self, bytes: &[u8]) -> Result<(), Error> {
        let other = Cluster::decode(bytes).map_err(Error::Protocol)?;
        let before = self.members.cluster.epoch();
        let moving = self.members.cluster.old().is_some();
        let changed = self.members.cluster.adopt(other).map_err(Error::Protocol)?;
        if changed {
            let retired = moving && self.members.cluster.old().is_none();
            if self.members.cluster.epoch() != before {
                tracing::info!(epoch = self.members.cluster.epoch(), "took a newer cluster layout");
            }
            // Skipping epochs (or taking a peer's word that a change ended) skips this
            // node's own end of it: it sweeps the ranges it no longer holds once stable
            // (it handed them over before: no transition ends before all old owners did).
            // Recorded first, so that an install that fails and runs again keeps it.
            if self.members.cluster.epoch() != before || retired {
                self.start_sweep();
            }
            self.install(true)?;
        }
        Ok(())
    }

    pub(super) fn layout_fetch_response(&mut self, op_id: OpId, result: Result<Response, Error>) {
        self.ops.remove(&op_id);
        self.members.fetching_layout = false;
        if let Ok(Response::Layout(b)) = result
            && let Err(e) = self.take_cluster(&b)
        {
            tracing::warn!("a peer's cluster layout: {e}");
        }
    }

    /// An answer said the sender's layout is older or newer than a peer's.
    pub(super) fn on_wrong_layout(&mut self, from: NodeId, epoch: u64) {
        if epoch > self.members.cluster.epoch() {
            self.fetch_layout(from);
        } else if epoch < self.members.cluster.epoch() {
            self.push_layout(from);
        }
    }

    // ---- The transition, driven every handoff interval.

    pub(super) fn membership_round(&mut self) {
        if let Some(persist) = self.members.install_pending
            && let Err(e) = self.install(persist)
        {
            tracing::warn!("installing the cluster layout (again): {e}");
            return;
        }
        // Each step below acts on the last: none before the one before is on disk.
        if !self.membership_durable() {
            return;
        }
        let me = self.cfg.me;
        let epoch = self.members.cluster.epoch();
        if self.members.cluster.old().is_some() && self.members.cluster.participants().contains(&me) {
            let mut mine = self.members.cluster.progress_of(me);
            let before = mine;
            if mine.acked < epoch && !self.old_writes_in_flight() {
                mine.acked = epoch;
            }
            self.members.cluster.raise(me, mine);
            let phase = self.members.cluster.phase();
            if phase != Phase::Acking && mine.synced < epoch {
                if self.members.transfers.iter().all(|t| t.done) {
                    // What was fetched reaches the disk before this node says it has it.
                    if self.members.data_synced == Some(epoch) {
                        mine.synced = epoch;
                    } else {
                        self.members.data_synced = Some(epoch);
                        self.sync_membership();
                    }
                } else {
                    self.drive_transfers();
                }
            }
            self.members.cluster.raise(me, mine);
            if self.members.cluster.phase() == Phase::Switching && mine.reading < epoch {
                mine.reading = epoch;
                tracing::info!(epoch, "reading from the new home replicas");
            }
            self.members.cluster.raise(me, mine);
            if self.members.cluster.phase() == Phase::Dropping && mine.dropped < epoch {
                if self.members.drop_done == Some(epoch) {
                    mine.dropped = epoch;
                    tracing::info!(epoch, "handed over and dropped the ranges this node lost");
                } else if self.members.drop_epoch != Some(epoch) {
                    // From the first key: whatever ran before (a sweep) is covered.
                    self.members.dropping = Some((0, vec![]));
                    self.members.drop_epoch = Some(epoch);
                    self.members.drop_page = None;
                }
            }
            self.members.cluster.raise(me, mine);
            if mine != before {
                self.persist_cluster();
            }
        }
        if self.members.cluster.retire_if_done() {
            tracing::info!(epoch, "the change to layout epoch {epoch} is complete");
            if let Err(e) = self.install(true) {
                tracing::error!("installing the layout: {e}");
            }
            self.members.retired_at_sync = self.meta_sync_asked;
            // The sweep starts once the end is on disk (the next round).
            self.start_sweep();
            return;
        }
        if !self.quiet() {
            self.drop_round();
        }
    }

    /// Whether a write placed on the old layout alone is still in flight.
    fn old_writes_in_flight(&self) -> bool {
        let e = self.members.cluster.epoch();
        self.ops.values().any(|op| matches!(op, Op::Put(p) if p.epoch < e))
    }

    fn drive_transfers(&mut self) {
        let now = self.now_ms;
        self.members.pace.refill(now);
        for i in 0..self.members.transfers.len() {
            if self.members.busy.len() >= FETCHES_IN_FLIGHT || self.members.pace.tokens() < 1.0 {
                break;
            }
            let t = &self.members.transfers[i];
            if t.done
                || self.members.busy.contains(&i)
                || self.members.retry_at[i] > now
                || self.members.cluster.is_lost(t.from)
            {
                continue;
            }
            let from = t.cursor.as_ref().map(|(token, key)| RangeCursor { token: *token, key: key.clone() });
            let req = Request::RangeFetch {
                epoch: self.members.cluster.epoch(),
                lo: t.lo,
                hi: t.hi,
                from,
                bytes_max: FETCH_PAGE_BYTES,
            };
            let to = t.from;
            self.members.busy.insert(i);
            let op = self.id();
            self.ops.insert(op, Op::Fetch { job: i, epoch: self.members.cluster.epoch() });
            self.send(op, to, req, FETCH_TIMEOUT_MS);
        }
    }

    /// A page of a range fetch: merge it, record where the next starts, and count it
    /// done once the flush has made both durable.
    pub(super) fn fetch_response(&mut self, op_id: OpId, from: NodeId, result: Result<Response, Error>) {
        let Some(Op::Fetch { job, epoch }) = self.ops.remove(&op_id) else { return };
        if epoch != self.members.cluster.epoch() || job >= self.members.transfers.len() {
            if epoch == self.members.cluster.epoch() {
                self.members.busy.remove(&job);
            }
            return;
        }
        if self.members.cluster.is_lost(self.members.transfers[job].from) {
            self.members.busy.remove(&job);
            return;
        }
        match self.take_page(job, from, result) {
            Ok((keys, bytes, next)) => {
                self.members.pace.spend(bytes as f64);
                let op = self.id();
                self.ops.insert(op, Op::FetchFlush { job, epoch, keys, bytes, next });
                self.flush(op);
            }
            Err(e) => {
                if let Error::WrongLayout { epoch, .. } = &e {
                    self.on_wrong_layout(from, *epoch);
                }
                let t = &mut self.members.transfers[job];
                t.failures = t.failures.saturating_add(1);
                t.last_error = Some(e.to_string());
                let backoff = 500u64 << t.failures.min(5);
                self.members.retry_at[job] = self.now_ms + backoff;
                self.members.busy.remove(&job);
            }
        }
    }

    #[allow(clippy::type_complexity)]
    fn take_page(
        &mut self,
        job: usize,
        from: NodeId,
        result: Result<Response, Error>,
    ) -> Result<(u64, u64, Option<(u64, Vec<u8>)>), Error> {
        let (items, next) = match result? {
            Response::RangePage { items, next } => (items, next),
            other => return Err(super::unexpected(from, &other)),
        };
        let t = self.members.transfers[job].clone();
        let at = |tok: u64, key: &[u8]| (t.position(tok), key.to_vec());
        let start = t.cursor.as_ref().map_or((0, vec![]), |(tok, k)| at(*tok, k));
        if items.len() > FETCH_PAGE_KEYS {
            return Err(Error::Protocol(format!("node {from} sent a page of {} keys", items.len())));
        }
        let mut last = start.clone();
        for it in &items {
            let tok = token(&it.key);
            let pos = at(tok, &it.key);
            if !t.contains(tok) || pos < last {
                return Err(Error::Protocol(format!("node {from} sent a key outside the range or out of order")));
            }
            last = pos;
        }
        if let Some(n) = &next
            && (!t.contains(n.token) || at(n.token, &n.key) <= start)
        {
            return Err(Error::Protocol(format!("node {from} sent a range cursor that does not move on")));
        }
        let (mut keys, mut bytes) = (0u64, 0u64);
        for KeyState { key, set } in &items {
            self.cfg.limits.check(key, None)?;
            // A key this node cannot take stops the transfer (it is shown, and retried):
            // skipping it would drop it when the old replicas drop the range.
            self.merge_in(key, set)?;
            keys += 1;
            bytes += crate::antientropy::state_bytes(key, set);
        }
        let next = next.map(|c| (c.token, c.key));
        let mut saved = t;
        saved.keys += keys;
        saved.bytes += bytes;
        saved.done = next.is_none();
        saved.cursor = next.clone();
        saved.failures = 0;
        saved.last_error = None;
        let e = self.members.cluster.epoch();
        self.store.put_meta(&format!("transfer.{e}.{job}"), &rmp_serde::to_vec(&saved).expect("encodes"))?;
        Ok((keys, bytes, next))
    }

    /// A page's flush finished.
    pub(super) fn fetch_flushed(
        &mut self,
        job: usize,
        epoch: u64,
        keys: u64,
        bytes: u64,
        next: Option<(u64, Vec<u8>)>,
        result: Result<(), Error>,
    ) {
        if epoch == self.members.cluster.epoch() {
            self.members.busy.remove(&job);
        }
        if epoch != self.members.cluster.epoch() || job >= self.members.transfers.len() {
            return;
        }
        if self.members.cluster.is_lost(self.members.transfers[job].from) {
            return;
        }
        let t = &mut self.members.transfers[job];
        match result {
            Ok(()) => {
                t.keys += keys;
                t.bytes += bytes;
                t.done = next.is_none();
                t.cursor = next;
                t.failures = 0;
                t.last_error = None;
            }
            Err(e) => {
                t.failures = t.failures.saturating_add(1);
                t.last_error = Some(format!("flushing: {e}"));
                self.members.retry_at[job] = self.now_ms + 1000;
            }
        }
    }

    /// A page for a node gaining a range of ours.
    pub(super) fn range_fetch(
        &self,
        epoch: u64,
        lo: u64,
        hi: u64,
        from: Option<RangeCursor>,
        bytes_max: u32,
    ) -> Result<Response, Error> {
        let c = &self.members.cluster;
        if epoch != c.epoch() || c.old().is_none() {
            return Err(wrong(c.epoch(), format!("no transition to epoch {epoch} runs here")));
        }
        let probe = Transfer {
            lo,
            hi,
            from: self.cfg.me,
            cursor: None,
            done: false,
            keys: 0,
            bytes: 0,
            failures: 0,
            last_error: None,
        };
        if let Some(f) = &from {
            self.cfg.limits.check(&f.key, None)?;
            if !probe.contains(f.token) {
                return Err(Error::BadRequest("a range cursor outside its range".into()));
            }
        }
        let bytes_max = u64::from(bytes_max.clamp(1, FETCH_PAGE_BYTES));
        let spans = range_spans(lo, hi);
        let mut items = vec![];
        let mut bytes = 0u64;
        let mut cursor: Option<(u64, Vec<u8>)> = from.map(|f| (f.token, f.key));
        for (s, e) in spans {
            let mut at: (u64, Vec<u8>) = match &cursor {
                Some((t, k)) if (s..=e).contains(t) => (*t, k.clone()),
                // The cursor is in a later span: this one is done.
                Some((t, _)) if probe.position(*t) > probe.position(e) => continue,
                _ => (s, vec![]),
            };
            cursor = None;
            loop {
                let page = self.store.scan((at.0, &at.1), e, FETCH_PAGE_KEYS)?;
                let full = page.len() == FETCH_PAGE_KEYS;
                for (key, set) in page {
                    if items.len() >= FETCH_PAGE_KEYS || (bytes >= bytes_max && !items.is_empty()) {
                        return Ok(Response::RangePage { items, next: Some(RangeCursor { token: token(&key), key }) });
                    }
                    bytes += crate::antientropy::state_bytes(&key, &set);
                    at = crate::ring::after(&key);
                    items.push(KeyState { key, set });
                }
                if !full {
                    break;
                }
            }
        }
        Ok(Response::RangePage { items, next: None })
    }

    // ---- Dropping ranges this node lost.

    /// The sweep after a transition ended: delete what this node still holds of
    /// ranges it lost. Its drop step handed every such key over already; what is left
    /// came since, by writes to both home sets that reached W new home replicas too.
    fn start_sweep(&mut self) {
        self.members.dropping = Some((0, vec![]));
        self.members.drop_epoch = None;
        // A page still out belongs to a pass this one replaces: its answer is ignored.
        self.members.drop_page = None;
        if let Err(e) = self.store.put_meta("dropping", &[1]) {
            tracing::warn!("recording the drop of lost ranges: {e}");
        }
    }

    /// Delete the state `set` of a key this node no longer keeps (no purge: other
    /// replicas hold it), with its anti-entropy trees.
    fn drop_key(&mut self, key: &[u8], set: &qkv_proto::DvvSet) -> Result<(), Error> {
        self.store.delete(key)?;
        self.aae.on_write(&self.ring, key, Some(crate::merkle::digest(key, set)), None, self.now_ms);
        Ok(())
    }

    /// A page of the drop: the keys this node holds that the newest layout does not
    /// place here. In a transition's `dropping` step they go to their home replicas
    /// first; once stable (the sweep) they are deleted. The drop waits in the other
    /// steps of a transition (a key lost now may be the node's to keep until its end).
    fn drop_round(&mut self) {
        // Keys go over only in this node's own pass of the epoch's `dropping` step, while
        // no tombstone is purged anywhere; any other drop waits for the sweep.
        let epoch = self.members.cluster.epoch();
        let handover = match self.members.cluster.phase() {
            Phase::Dropping if self.members.drop_epoch == Some(epoch) => true,
            Phase::Stable => false,
            _ => return,
        };
        let me = self.cfg.me;
        let mut scanned = 0;
        let (keys, next) = loop {
            if self.members.drop_page.is_some() || self.now_ms < self.members.drop_retry_ms {
                return;
            }
            let Some((t, k)) = self.members.dropping.clone() else { return };
            let page = match self.store.scan((t, &k), u64::MAX, DROP_PAGE) {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!("dropping lost ranges: {e}");
                    return;
                }
            };
            scanned += page.len();
            let full = page.len() == DROP_PAGE;
            let mut next = None;
            let mut keys = vec![];
            // What the epoch took from this node goes over; what neither layout places
            // here is a leftover of an earlier epoch, whose own pass handed it over (or
            // a write to both home sets that reached W new home replicas): deleted. A
            // stale leftover handed over could bring back a value whose tombstone was
            // purged before this transition began.
            let mut stale = vec![];
            let lost = &self.members.cluster.lost;
            for (key, set) in page {
                next = Some(crate::ring::after(&key));
                let homes = self.ring.preference_list(&key);
                // A key every new home of which is forgotten has nowhere to go (and a
                // page with no one to send to would hold the drop for ever): it stays
                // here until a sweep, once a replace made a home live again, deletes it.
                // The operator forgot every copy the cluster counted on.
                if homes.contains(&me) || homes.iter().all(|h| lost.contains(h)) {
                    continue;
                }
                let lost_now = self.members.old_ring.as_ref().is_some_and(|o| o.preference_list(&key).contains(&me));
                if handover && lost_now { keys.push((key, set)) } else { stale.push((key, set)) }
            }
            let next = if full { next } else { None };
            if !self.delete_unchanged(&stale) {
                return;
            }
            if !keys.is_empty() {
                break (keys, next);
            }
            self.drop_advance(next);
            // Pages of keys kept here, or deleted, cost no round trip: go on, within a bound.
            if scanned >= DROP_SCAN_PER_ROUND {
                return;
            }
        };
        // Each key's state to each of its home replicas, in batches of the handoff's size.
        // Forgotten home replicas take nothing: their replacement fetches from the others.
        let mut per: BTreeMap<NodeId, Vec<KeyState>> = BTreeMap::new();
        let lost = &self.members.cluster.lost;
        for (key, set) in &keys {
            for &h in self.ring.preference_list(key).iter().filter(|&&h| h != me && !lost.contains(&h)) {
                per.entry(h).or_default().push(KeyState { key: key.clone(), set: set.clone() });
            }
        }
        let batch_bytes = self.hints.limits().batch_bytes_max;
        let mut waiting = BTreeSet::new();
        for (to, states) in per {
            for items in crate::antientropy::batches(states, batch_bytes) {
                let op = self.id();
                self.ops.insert(op, Op::DropHandoff);
                waiting.insert(op);
                self.send(op, to, Request::ReplicaPutBatch { items, sync: true }, HANDOFF_TIMEOUT_MS);
            }
        }
        self.members.drop_page = Some(DropPage { keys, waiting, failed: false, next });
    }

    /// A home replica's answer to a page of the drop; the last one deletes the page.
    pub(super) fn drop_handoff_response(&mut self, op: OpId, result: Result<Response, Error>) {
        self.ops.remove(&op);
        let Some(p) = self.members.drop_page.as_mut() else { return };
        if !p.waiting.remove(&op) {
            return;
        }
        if !matches!(result, Ok(Response::ReplicaAck)) {
            p.failed = true;
        }
        if !p.waiting.is_empty() {
            return;
        }
        let p = self.members.drop_page.take().expect("checked");
        if p.failed {
            // Sent again until every home replica takes it: the transition waits. A key a
            // home replica refuses for good (over its limits there) holds it until resolved.
            tracing::warn!(?result, "a home replica did not take a page of a dropped range; it stays here for now");
            self.members.drop_retry_ms = self.now_ms + DROP_RETRY_MS;
            return;
        }
        if self.delete_unchanged(&p.keys) {
            self.drop_advance(p.next);
            self.drop_round();
        }
    }

    /// Delete the keys of a page of the drop whose state is still what it was; false if
    /// the store failed (the page is read again next round).
    fn delete_unchanged(&mut self, keys: &[(Vec<u8>, qkv_proto::DvvSet)]) -> bool {
        let mut dropped = 0;
        let mut ok = true;
        for (key, sent) in keys {
            // A state that changed since it was sent came by a write to both home sets
            // (which reached W new home replicas too): the sweep deletes it.
            match self.store.get(key) {
                Ok(Some(now)) if now == *sent => {}
                Ok(_) => continue,
                Err(e) => {
                    tracing::warn!("dropping a key of a lost range: {e}");
                    ok = false;
                    break;
                }
            }
            if let Err(e) = self.drop_key(key, sent) {
                tracing::warn!("dropping a key of a lost range: {e}");
                ok = false;
                break;
            }
            dropped += 1;
        }
        self.members.dropped += dropped;
        if dropped > 0 {
            self.flush_unawaited();
        }
        ok
    }

    /// Move the drop's cursor past a page: to `next`, or the drop is done.
    fn drop_advance(&mut self, next: Option<(u64, Vec<u8>)>) {
        if let Some(n) = next {
            self.members.dropping = Some(n);
            return;
        }
        self.members.dropping = None;
        match self.members.drop_epoch.take() {
            Some(epoch) => self.members.drop_done = Some(epoch),
            None => {
                if let Err(e) = self.store.put_meta("dropping", &[]) {
                    tracing::warn!("recording the drop of lost ranges: {e}");
                }
                tracing::info!(keys = self.members.dropped, "swept the ranges this node no longer holds");
            }
        }
    }

    // ---- The vote (acceptor side).

    pub(super) fn layout_prepare(&mut self, req: ReqId, epoch: u64, ballot: (u64, NodeId)) -> Result<(), Error> {
        let vote = self.members.acceptor.prepare(&self.members.cluster, self.cfg.me, epoch, ballot);
        self.answer_vote(req, vote)
    }

    pub(super) fn layout_accept(
        &mut self,
        req: ReqId,
        epoch: u64,
        ballot: (u64, NodeId),
        layout: &[u8],
    ) -> Result<(), Error> {
        let layout = decode_layout(layout).map_err(Error::BadRequest)?;
        let vote = self.members.acceptor.accept(&self.members.cluster, self.cfg.me, epoch, ballot, layout);
        self.answer_vote(req, vote)
    }

    /// Answer a vote; one that changed the acceptor is synced first.
    fn answer_vote(&mut self, req: ReqId, vote: Vote) -> Result<(), Error> {
        let resp = Response::LayoutVote(serde_bytes::ByteBuf::from(encode_vote(&vote)));
        if matches!(vote, Vote::Promise(_) | Vote::Accepted) {
            self.store.put_meta("acceptor", &self.members.acceptor.encode())?;
            let op = self.id();
            self.ops.insert(op, Op::MetaReply { req: Some(req), vote: None, resp });
            self.flush_sync(op);
        } else {
            self.reply(req, Ok(resp));
        }
        Ok(())
    }

    // ---- The vote (proposer side).

    fn commit(&mut self, req: ReqId) -> Result<(), Error> {
        if self.ops.values().any(|o| matches!(o, Op::Commit { .. })) {
            return Err(Error::Overloaded("a commit is already running on this node".into()));
        }
        let c = &self.members.cluster;
        if c.old().is_some() {
            return Err(Error::BadRequest(format!(
                "epoch {} is still moving data ({:?}): commit once it is done (see `qkv cluster show`)",
                c.epoch(),
                c.phase()
            )));
        }
        if self.members.staged.is_empty() {
            return Err(Error::BadRequest("nothing is staged on this node".into()));
        }
        let proposal = self.staged_layout()?;
        let plan = Plan::new(c.newest(), &proposal).map_err(|e| Error::BadRequest(e.to_string()))?;
        if let Some(why) = plan.unsourced_warning() {
            return Err(Error::BadRequest(format!("refused: {why}")));
        }
        let round = Round::new(c, self.cfg.me, proposal, self.members.acceptor.promised.max(self.members.outbid));
        let op = self.id();
        let (epoch, ballot) = (round.epoch, round.ballot);
        let voters: Vec<NodeId> = round.voters().collect();
        self.ops.insert(op, Op::Commit { req, round: Box::new(round) });
        for v in voters {
            if v == self.cfg.me {
                let vote = self.members.acceptor.prepare(&self.members.cluster, v, epoch, ballot);
                self.local_vote(op, vote);
            } else {
                self.send(op, v, Request::LayoutPrepare { epoch, ballot }, self.cfg.request_timeout_ms);
            }
        }
        Ok(())
    }

    /// This node's own vote in its round counts once it is durable.
    fn local_vote(&mut self, commit: OpId, vote: Vote) {
        if matches!(vote, Vote::Promise(_) | Vote::Accepted)
            && let Err(e) = self.store.put_meta("acceptor", &self.members.acceptor.encode())
        {
            return self.commit_vote(commit, self.cfg.me, Err(e.to_string()));
        }
        let op = self.id();
        self.ops.insert(op, Op::MetaReply { req: None, vote: Some((commit, vote)), resp: Response::ReplicaAck });
        self.flush_sync(op);
    }

    pub(super) fn commit_response(&mut self, op_id: OpId, from: NodeId, result: Result<Response, Error>) {
        let vote = match result {
            Ok(Response::LayoutVote(b)) => decode_vote(&b),
            Ok(other) => Err(super::unexpected(from, &other).to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Ok(Vote::Refused(_)) = &vote {
            // A voter behind this node learns the layout (it may vote next time).
            self.push_layout(from);
        }
        self.commit_vote(op_id, from, vote);
    }

    pub(super) fn commit_vote(&mut self, op_id: OpId, from: NodeId, vote: Result<Vote, String>) {
        let Some(Op::Commit { round, .. }) = self.ops.get_mut(&op_id) else { return };
        if let Ok(Vote::Outbid(b)) = &vote
            && crate::membership::check_ballot(*b).is_ok()
        {
            self.members.outbid = self.members.outbid.max(*b);
        }
        match round.on_vote(from, vote) {
            RoundStep::Wait => {}
            RoundStep::Accept(layout) => {
                let (epoch, ballot) = (round.epoch, round.ballot);
                let voters: Vec<NodeId> = round.voters().collect();
                let bytes = encode_layout(&layout);
                for v in voters {
                    if v == self.cfg.me {
                        let vote =
                            self.members.acceptor.accept(&self.members.cluster, v, epoch, ballot, layout.clone());
                        self.local_vote(op_id, vote);
                    } else {
                        let req = Request::LayoutAccept { epoch, ballot, layout: bytes.clone() };
                        self.send(op_id, v, req, self.cfg.request_timeout_ms);
                    }
                }
            }
            RoundStep::Chosen(layout) => {
                let Some(Op::Commit { req, round }) = self.ops.remove(&op_id) else { return };
                let mine = layout == round.proposal;
                match self.chosen(layout, mine) {
                    // The commit is answered once the new layout is durable here: an
                    // acknowledged commit is never forgotten by a power loss.
                    Ok(resp) => {
                        let op = self.id();
                        self.ops.insert(op, Op::MetaReply { req: Some(req), vote: None, resp });
                        self.flush_sync(op);
                    }
                    Err(e) => self.reply(req, Err(e)),
                }
            }
            RoundStep::Failed(why) => {
                let Some(Op::Commit { req, .. }) = self.ops.remove(&op_id) else { return };
                self.reply(req, Err(Error::Unreachable(format!("the commit did not happen: {why}"))));
            }
        }
    }

    /// A layout was committed for the next epoch: start its transition and tell everyone.
    fn chosen(&mut self, layout: Layout, mine: bool) -> Result<Response, Error> {
        let epoch = layout.epoch;
        if self.members.cluster.epoch() < epoch {
            self.members.cluster.begin(layout).map_err(Error::Internal)?;
            self.install(true)?;
        }
        let everyone: Vec<NodeId> = self.members.cluster.members().into_iter().filter(|&m| m != self.cfg.me).collect();
        for m in everyone {
            self.push_layout(m);
        }
        if !mine {
            return Err(Error::BadRequest(format!(
                "another change was committed as epoch {epoch} first; yours stays staged: look at `qkv cluster plan` again"
            )));
        }
        self.members.staged.clear();
        self.store.put_meta("staged", &rmp_serde::to_vec(&self.members.staged).expect("encodes"))?;
        self.flush_unawaited();
        tracing::info!(epoch, "committed a layout change");
        Ok(Response::ClusterInfo(serde_bytes::ByteBuf::from(self.cluster_info(None).encode())))
    }

    pub(super) fn meta_flushed(
        &mut self,
        req: Option<ReqId>,
        vote: Option<(OpId, Vote)>,
        resp: Response,
        result: Result<(), Error>,
    ) {
        if let Some(req) = req {
            self.reply(req, result.map(|()| resp));
        } else if let Some((commit, vote)) = vote {
            let me = self.cfg.me;
            self.commit_vote(commit, me, result.map(|()| vote).map_err(|e| e.to_string()));
        }
    }

    // ---- Admin.

    fn staged_layout(&self) -> Result<Layout, Error> {
        let mut l = self.members.cluster.newest().clone();
        for c in &self.members.staged {
            l = l.apply(c).map_err(|e| Error::BadRequest(e.to_string()))?;
        }
        // A layout of forgotten nodes alone would have nobody to go on with.
        if self.members.cluster.all_forgotten(&l) {
            return Err(Error::BadRequest(
                "every member of the staged layout is forgotten: replace them, or stage a join".into(),
            ));
        }
        // However many changes are staged, they commit as one epoch.
        l.epoch = self.members.cluster.epoch() + 1;
        if self.members.staged.len() > 1 {
            l.replaced = self
                .members
                .staged
                .iter()
                .filter_map(|c| match c {
                    Change::Replace { old, .. } if !l.members.contains_key(old) => Some(*old),
                    _ => None,
                })
                .collect();
        }
        Ok(l)
    }

    fn cluster_info(&self, plan: Option<Plan>) -> ClusterInfo {
        let now = self.now_ms;
        let secs = (now.saturating_sub(self.members.started_ms) as f64 / 1000.0).max(0.001);
        ClusterInfo {
            node: self.cfg.me,
            cluster: self.members.cluster.clone(),
            phase: match self.members.cluster.phase() {
                // Ended here, not yet on disk: an operator must not act on it yet.
                Phase::Stable if self.meta_sync_done < self.members.retired_at_sync => Phase::Dropping,
                p => p,
            },
            staged: self.members.staged.clone(),
            plan,
            transfers: self.members.transfers.iter().map(|t| (t.clone(), t.bytes as f64 / secs)).collect(),
            dropped_keys: self.members.dropped,
        }
    }

    /// What `qkv cluster` reports (also for the driver's status and metrics).
    pub fn membership(&self) -> ClusterInfo {
        self.cluster_info(None)
    }

    /// The peer address of node `id` in a layout in effect (the driver dials it).
    pub fn peer_addr(&self, id: NodeId) -> Option<&str> {
        self.members.cluster.addr(id)
    }

    /// The newest layout epoch this node holds (the driver re-reads addresses when it moves).
    pub fn layout_epoch(&self) -> u64 {
        self.members.cluster.epoch()
    }

    pub(super) fn cluster_admin(&mut self, req: ReqId, admin: ClusterAdmin) -> Result<Option<Response>, Error> {
        let info = |core: &Self, plan| {
            Ok(Some(Response::ClusterInfo(serde_bytes::ByteBuf::from(core.cluster_info(plan).encode()))))
        };
        match admin {
            ClusterAdmin::Show => info(self, None),
            ClusterAdmin::Stage(change) => {
                if self.members.staged.len() >= STAGED_MAX {
                    return Err(Error::BadRequest(format!("at most {STAGED_MAX} changes may be staged")));
                }
                self.members.staged.push(change_of(change));
                if let Err(e) = self.staged_layout() {
                    self.members.staged.pop();
                    return Err(e);
                }
                self.store.put_meta("staged", &rmp_serde::to_vec(&self.members.staged).expect("encodes"))?;
                self.flush_unawaited();
                let plan = self.plan()?;
                info(self, Some(plan))
            }
            ClusterAdmin::Plan => {
                if self.members.staged.is_empty() {
                    return Err(Error::BadRequest("nothing is staged on this node".into()));
                }
                let plan = self.plan()?;
                info(self, Some(plan))
            }
            ClusterAdmin::Abort => {
                self.members.staged.clear();
                self.store.put_meta("staged", &rmp_serde::to_vec(&self.members.staged).expect("encodes"))?;
                self.flush_unawaited();
                info(self, None)
            }
            ClusterAdmin::Commit => {
                self.commit(req)?;
                Ok(None)
            }
            ClusterAdmin::Forget { id } => {
                self.forget(req, id)?;
                Ok(None)
            }
        }
    }

    /// Forget member `id`, gone for good: a change in flight stops waiting for it and
    /// nothing is routed to it. Refused for this node itself and for a node this one
    /// sees up (a live node forgotten could acknowledge writes nobody else holds).
    /// Answered once durable here; pings spread it.
    fn forget(&mut self, req: ReqId, id: NodeId) -> Result<(), Error> {
        if id == self.cfg.me {
            return Err(Error::BadRequest(format!("node {id} cannot forget itself: ask another member")));
        }
        if !self.members.cluster.is_lost(id) && self.detector.is_up(id) {
            return Err(Error::BadRequest(format!(
                "node {id} is up as node {} sees it: forget only a node gone for good (stop it first)",
                self.cfg.me
            )));
        }
        // On a copy first, stored before it takes effect: a store that fails the write
        // leaves the forget undone here (and unspread), so the error the operator gets
        // is true.
        let mut next = self.members.cluster.clone();
        if next.forget(id).map_err(Error::BadRequest)? {
            self.store.put_meta("cluster", &next.encode())?;
            self.members.cluster = next;
            tracing::warn!(node = id, epoch = self.members.cluster.epoch(), "forgot a node: it is gone for good");
            // Stored, so taken: a step of the install that fails now is retried every
            // round, and the operator is told the truth (the forget holds).
            if let Err(e) = self.install(true) {
                tracing::warn!(node = id, "installing the cluster after a forget: {e}; retried every round");
            }
        }
        let resp = Response::ClusterInfo(serde_bytes::ByteBuf::from(self.cluster_info(None).encode()));
        let op = self.id();
        self.ops.insert(op, Op::MetaReply { req: Some(req), vote: None, resp });
        self.flush_sync(op);
        Ok(())
    }

    fn plan(&self) -> Result<Plan, Error> {
        let after = self.staged_layout()?;
        Plan::new(self.members.cluster.newest(), &after).map_err(|e| Error::BadRequest(e.to_string()))
    }
}

/// The meta record of the actor a node writes as, when it is not the one its disk
/// epoch makes (it gained ranges since: [`Core::renew_actor`]): the disk epoch (4
/// bytes) and the actor (8), little-endian.
const ACTOR_META: &str = "actor";

/// The actor node `me` writes as on a disk of epoch `disk`: the one a change gave it
/// ([`ACTOR_META`]), unless the disk took a new epoch since (a wipe, or an unclean
/// restart), then the disk epoch's own.
pub(super) fn load_actor<S: Store>(store: &S, me: NodeId, disk: u32) -> Result<qkv_proto::Actor, Error> {
    let fresh = qkv_proto::actor(me, disk);
    let Some(b) = store.get_meta(ACTOR_META)? else { return Ok(fresh) };
    let recorded_disk = b.get(..4).and_then(|x| <[u8; 4]>::try_from(x).ok()).map(u32::from_le_bytes);
    let actor = b.get(4..).and_then(|x| <[u8; 8]>::try_from(x).ok()).map(u64::from_le_bytes);
    match (recorded_disk, actor) {
        (Some(d), Some(a)) if qkv_proto::actor_node(a) == me && qkv_proto::actor_epoch(a) != 0 => {
            Ok(if d == disk { a } else { fresh })
        }
        _ => {
            Err(Error::Storage(format!("the recorded actor {b:02x?} is not one of node {me}: the data dir is damaged")))
        }
    }
}

/// The SplitMix64 step: a well-mixed, deterministic successor of `x` (the core draws
/// no random numbers).
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
