//! Cluster layout: which node owns which vnode labels, at which epoch. Pure data
//! and pure functions: the claim that places a joining node's labels, the
//! hand-over of a leaving node's, and the plan that says what a change moves.
//!
//! # The vnode scheme
//!
//! The ring is cut into `partitions` arcs of (nearly) equal width: partition `i`'s
//! label is the one, of a fixed pool of candidates, whose token lies just past
//! `i / partitions` of the hash space, so every node computes the same cut. A
//! layout names each partition's owner; a key's home replicas are the owner of its
//! partition and the next N - 1 distinct owners clockwise. A first layout deals the
//! partitions round robin in ring order, so any N neighbours have distinct owners
//! (except across the wrap when the partitions do not divide evenly, which costs a
//! fraction of a partition's share) and every node holds the same share of the keys
//! to within one partition.
//!
//! - **Join**: the new node takes partitions, one at a time, from the member that
//!   holds the largest share of the keys as a home replica, choosing the partition
//!   whose move evens the shares best, preferring partitions none of whose N - 1
//!   neighbours on either side the new node already owns. It stops when one more
//!   would not bring the shares closer to even. No other label moves: the new node
//!   takes about `partitions / (nodes + 1)` partitions, and on a partitioned ring
//!   only it gains ranges (tested), the least any scheme moves. (On a legacy ring,
//!   whose walks can pass more than N arcs, a third node may gain a few.)
//! - **Leave**: each of the node's partitions goes to the member that then evens
//!   the shares best. Only the leaving node's partitions move.
//! - **Replace**: the new node takes the old one's partitions: exactly its ranges
//!   move, to one node, and every other share is unchanged.
//!
//! A layout built before layouts existed ([`Layout::legacy`]: node `m` owns labels
//! `(m, 0..vnodes)`) keeps its placement, and joins and leaves move its labels
//! the same way (its arcs are unequal, so its shares are less even).

use std::collections::BTreeMap;

use qkv_proto::NodeId;
use serde::{Deserialize, Serialize};

use crate::ring::{LABELS_MAX, Ring, RingError, VNODES_MAX, VNode};

/// Partitions of a new cluster's ring.
pub const PARTITIONS_DEFAULT: u32 = 1024;
/// Most partitions a ring may be cut into.
pub const PARTITIONS_MAX: u32 = 16_384;
/// Most members a layout may hold.
pub const MEMBERS_MAX: usize = 1024;

/// The largest layout epoch (and ballot) a node takes from a peer or its disk: far
/// below `u64::MAX`, so the next epoch is never an overflow. A million changes a
/// second would take nine years to reach it.
pub const EPOCH_MAX: u64 = 1 << 48;
/// Longest member address, bytes.
pub const ADDR_BYTES_MAX: usize = 256;
/// The largest replication factor a layout takes.
pub const N_MAX: usize = 16;
/// Candidate labels per partition the cut chooses from: the widths come out within
/// about 1/this of even.
const CUT_CANDIDATES: u32 = 32;
/// The node id of partition labels (0 is no node's id).
const PARTITION_LABEL: NodeId = 0;

/// A member of the cluster: where it listens for peers, and the labels it owns.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The address other nodes reach it at (`host:port`).
    pub addr: String,
    /// The labels it owns, sorted.
    pub labels: Vec<VNode>,
}

/// The cluster's membership at one epoch. See the module docs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    /// Raised by one at every committed change.
    pub epoch: u64,
    /// Replication factor.
    pub n: usize,
    /// Members by id.
    pub members: BTreeMap<NodeId, Member>,
    /// Members of the previous epoch this one replaced (`Change::Replace`): a node
    /// replaced is taken as lost, so nobody fetches from it or waits for it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replaced: Vec<NodeId>,
}

/// A change to stage.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    /// A new node joins at `addr`.
    Join {
        /// Its id (not a member).
        id: NodeId,
        /// Its peer address.
        addr: String,
    },
    /// A member leaves; its ranges go to the others.
    Leave {
        /// The member.
        id: NodeId,
    },
    /// A new node takes a member's place, and exactly its ranges.
    Replace {
        /// The member leaving.
        old: NodeId,
        /// The new node (not a member).
        new: NodeId,
        /// The new node's peer address.
        addr: String,
    },
}

/// A change that cannot be made, or a layout that is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LayoutError {
    /// The node is already a member.
    #[error("node {0} is already a member")]
    AlreadyMember(NodeId),
    /// The node is not a member.
    #[error("node {0} is not a member")]
    NotMember(NodeId),
    /// The change would leave fewer members than the replication factor.
    #[error("the cluster would have {nodes} nodes, fewer than the replication factor {n}")]
    TooFewNodes {
        /// Members after the change.
        nodes: usize,
        /// Replication factor.
        n: usize,
    },
    /// Too many members.
    #[error("a layout holds at most {MEMBERS_MAX} members")]
    TooManyMembers,
    /// Partitions out of range.
    #[error("partitions must be between the number of nodes and {PARTITIONS_MAX}, got {0}")]
    BadPartitions(u32),
    /// An epoch past [`EPOCH_MAX`].
    #[error("layout epoch {0} is past the largest, {EPOCH_MAX}")]
    BadEpoch(u64),
    /// Node id 0 is reserved.
    #[error("node id 0 is reserved")]
    ZeroId,
    /// No members.
    #[error("a layout needs at least one member")]
    NoMembers,
    /// The replication factor is out of range.
    #[error("the replication factor must be between 1 and {N_MAX}, got {0}")]
    BadN(usize),
    /// A joining node found no partition it could take without leaving a member
    /// with none (more partitions are needed: a ring of more partitions, or fewer members).
    #[error("node {0} cannot join: no member has a partition to spare")]
    NothingToTake(NodeId),
    /// A member has no address, or one longer than [`ADDR_BYTES_MAX`].
    #[error("node {0} has no address, or one longer than {ADDR_BYTES_MAX} bytes")]
    NoAddress(NodeId),
    /// The layout's ring cannot be built.
    #[error(transparent)]
    Ring(#[from] RingError),
}

impl Layout {
    /// The layout of a new cluster of `members` (id, peer address): the ring cut
    /// into `partitions`, dealt round robin in ring order to the members sorted by
    /// id. Every node computes the same one from the same seeds.
    pub fn initial(members: &[(NodeId, String)], partitions: u32, n: usize) -> Result<Layout, LayoutError> {
        if members.is_empty() {
            return Err(LayoutError::NoMembers);
        }
        if partitions == 0 || partitions > PARTITIONS_MAX || (partitions as usize) < members.len() {
            return Err(LayoutError::BadPartitions(partitions));
        }
        let mut sorted = members.to_vec();
        sorted.sort();
        let mut layout = Layout { epoch: 1, n, members: BTreeMap::new(), replaced: vec![] };
        for (id, addr) in &sorted {
            layout.check_new(*id, addr)?;
            layout.members.insert(*id, Member { addr: addr.clone(), labels: vec![] });
        }
        for (i, label) in cut(partitions).into_iter().enumerate() {
            let id = sorted[i % sorted.len()].0;
            layout.members.get_mut(&id).expect("a member").labels.push(label);
        }
        layout.sort_labels();
        layout.check()?;
        Ok(layout)
    }

    /// The layout every release before layouts placed keys with: node `m` owns
    /// labels `(m, 0..vnodes)`. A data dir from then starts on it, so no key moves.
    pub fn legacy(members: &[(NodeId, String)], vnodes: u32, n: usize) -> Result<Layout, LayoutError> {
        if vnodes == 0 || vnodes > VNODES_MAX {
            return Err(RingError::BadVnodes(vnodes).into());
        }
        let mut layout = Layout { epoch: 1, n, members: BTreeMap::new(), replaced: vec![] };
        for (id, addr) in members {
            layout.check_new(*id, addr)?;
            let labels = (0..vnodes).map(|index| VNode { node: *id, index }).collect();
            layout.members.insert(*id, Member { addr: addr.clone(), labels });
        }
        layout.check()?;
        Ok(layout)
    }

    /// Every label with its owner.
    pub fn labels(&self) -> Vec<(VNode, NodeId)> {
        self.members.iter().flat_map(|(&id, m)| m.labels.iter().map(move |&l| (l, id))).collect()
    }

    /// The ring this layout places keys on.
    pub fn ring(&self) -> Result<Ring, RingError> {
        Ring::from_labels(&self.labels(), self.n)
    }

    /// Each member's share of the key space as a home replica (sums to N).
    pub fn ownership(&self) -> BTreeMap<NodeId, f64> {
        Shares::new(&self.labels(), self.n).ownership()
    }

    /// A valid layout: enough members, each with an address and labels, no label
    /// twice, bounds kept (a layout from a peer or the disk is checked with this).
    pub fn check(&self) -> Result<(), LayoutError> {
        self.checked_ring().map(drop)
    }

    /// The ring of a layout that passes [`Layout::check`], built once.
    pub fn checked_ring(&self) -> Result<Ring, LayoutError> {
        if self.members.len() > MEMBERS_MAX {
            return Err(LayoutError::TooManyMembers);
        }
        if self.members.is_empty() {
            return Err(LayoutError::NoMembers);
        }
        if self.n == 0 || self.n > N_MAX {
            return Err(LayoutError::BadN(self.n));
        }
        if self.epoch > EPOCH_MAX {
            return Err(LayoutError::BadEpoch(self.epoch));
        }
        if self.members.contains_key(&0) {
            return Err(LayoutError::ZeroId);
        }
        if self.replaced.len() > MEMBERS_MAX || self.replaced.iter().any(|r| self.members.contains_key(r)) {
            return Err(
                RingError::BadLabels("a replaced node is still a member, or too many were replaced".into()).into()
            );
        }
        if let Some((id, _)) = self.members.iter().find(|(_, m)| m.addr.is_empty() || m.addr.len() > ADDR_BYTES_MAX) {
            return Err(LayoutError::NoAddress(*id));
        }
        if let Some((id, _)) = self.members.iter().find(|(_, m)| m.labels.is_empty()) {
            return Err(RingError::BadLabels(format!("node {id} owns no label")).into());
        }
        let labels: usize = self.members.values().map(|m| m.labels.len()).sum();
        if labels > LABELS_MAX {
            return Err(RingError::BadLabels(format!("{labels} labels, more than {LABELS_MAX}")).into());
        }
        Ok(self.ring()?)
    }

    fn check_new(&self, id: NodeId, addr: &str) -> Result<(), LayoutError> {
        if id == 0 {
            return Err(LayoutError::ZeroId);
        }
        if self.members.contains_key(&id) {
            return Err(LayoutError::AlreadyMember(id));
        }
        if addr.is_empty() || addr.len() > ADDR_BYTES_MAX {
            return Err(LayoutError::NoAddress(id));
        }
        if self.members.len() >= MEMBERS_MAX {
            return Err(LayoutError::TooManyMembers);
        }
        Ok(())
    }

    fn sort_labels(&mut self) {
        for m in self.members.values_mut() {
            m.labels.sort_unstable();
        }
    }

    /// The layout after `change`, at the next epoch.
    pub fn apply(&self, change: &Change) -> Result<Layout, LayoutError> {
        let mut next = self.clone();
        next.epoch += 1;
        next.replaced.clear();
        match change {
            Change::Join { id, addr } => {
                self.check_new(*id, addr)?;
                next.members.insert(*id, Member { addr: addr.clone(), labels: vec![] });
                take_for(&mut next, *id);
                if next.members[id].labels.is_empty() {
                    return Err(LayoutError::NothingToTake(*id));
                }
            }
            Change::Leave { id } => {
                let Some(gone) = next.members.remove(id) else { return Err(LayoutError::NotMember(*id)) };
                if next.members.len() < self.n {
                    return Err(LayoutError::TooFewNodes { nodes: next.members.len(), n: self.n });
                }
                hand_over(&mut next, gone.labels);
            }
            Change::Replace { old, new, addr } => {
                self.check_new(*new, addr)?;
                let Some(gone) = next.members.remove(old) else { return Err(LayoutError::NotMember(*old)) };
                next.members.insert(*new, Member { addr: addr.clone(), labels: gone.labels });
                next.replaced.push(*old);
            }
        }
        next.sort_labels();
        next.check()?;
        Ok(next)
    }
}

/// The partition labels of a ring cut into `partitions`: for each, of a fixed pool
/// of candidates, the one whose token lies nearest past `i / partitions` of the
/// hash space (the same on every node).
fn cut(partitions: u32) -> Vec<VNode> {
    let p = u128::from(partitions);
    let mut best: Vec<Option<(u64, VNode)>> = vec![None; partitions as usize];
    for index in 0..partitions * CUT_CANDIDATES {
        let v = VNode { node: PARTITION_LABEL, index };
        let t = v.token();
        // Slot `t * p / 2^64`, and how far past the slot's start `t` lies.
        let slot = ((u128::from(t) * p) >> 64) as usize;
        let start = ((slot as u128) << 64).div_ceil(p) as u64;
        let off = t - start;
        if best[slot].is_none_or(|(o, _)| off < o) {
            best[slot] = Some((off, v));
        }
    }
    best.into_iter().flatten().map(|(_, v)| v).collect()
}

/// The labels in ring order with their owners and widths, and each member's share
/// as a home replica, kept up to date as owners change.
struct Shares {
    /// (token, label, owner), sorted by token.
    ring: Vec<(u64, VNode, NodeId)>,
    widths: Vec<f64>,
    n: usize,
    own: BTreeMap<NodeId, f64>,
    /// Arcs per owner.
    arcs_of: BTreeMap<NodeId, usize>,
}

impl Shares {
    fn new(labels: &[(VNode, NodeId)], n: usize) -> Shares {
        let mut ring: Vec<(u64, VNode, NodeId)> = labels.iter().map(|&(v, o)| (v.token(), v, o)).collect();
        ring.sort_unstable();
        let len = ring.len();
        let widths = (0..len)
            .map(|i| {
                let prev = if i == 0 { ring[len - 1].0 } else { ring[i - 1].0 };
                if len == 1 { 1.0 } else { ring[i].0.wrapping_sub(prev) as f64 / 2f64.powi(64) }
            })
            .collect();
        let mut arcs_of = BTreeMap::new();
        for r in &ring {
            *arcs_of.entry(r.2).or_default() += 1;
        }
        let mut s = Shares { ring, widths, n, own: BTreeMap::new(), arcs_of };
        s.recompute();
        s
    }

    /// Members owning arcs (not the placeholder of arcs being handed over).
    fn members(&self) -> usize {
        self.arcs_of.len() - usize::from(self.arcs_of.contains_key(&PARTITION_LABEL))
    }

    /// Arc `i`'s home replicas: its owner and the next distinct owners, N in all.
    fn home(&self, i: usize, out: &mut Vec<NodeId>) {
        out.clear();
        let (len, n) = (self.ring.len(), self.n.min(self.members()));
        for j in 0..len {
            let node = self.ring[(i + j) % len].2;
            // An arc being handed over holds no replica: its keys go on to the next owners.
            if node != PARTITION_LABEL && !out.contains(&node) {
                out.push(node);
                if out.len() == n {
                    return;
                }
            }
        }
    }

    fn recompute(&mut self) {
        let mut own: BTreeMap<NodeId, f64> = self.ring.iter().map(|r| (r.2, 0.0)).collect();
        let mut home = vec![];
        for i in 0..self.ring.len() {
            self.home(i, &mut home);
            for node in &home {
                *own.get_mut(node).expect("an owner") += self.widths[i];
            }
        }
        self.own = own;
    }

    fn ownership(&self) -> BTreeMap<NodeId, f64> {
        self.own.clone()
    }

    /// The arcs whose home replicas may change when arc `i`'s owner does: `i`, and
    /// each arc before it whose walk meets fewer than N distinct owners before `i`.
    fn affected(&self, i: usize) -> Vec<usize> {
        let (len, n) = (self.ring.len(), self.n.min(self.members()));
        let mut out = vec![i];
        let mut seen: Vec<NodeId> = vec![];
        for back in 1..len {
            let j = (i + len - back) % len;
            let o = self.ring[j].2;
            if o != PARTITION_LABEL && !seen.contains(&o) {
                seen.push(o);
            }
            if seen.len() >= n {
                break;
            }
            out.push(j);
        }
        out
    }

    /// Give arc `i` to `to`, updating the shares of the arcs it affects.
    fn set_owner(&mut self, i: usize, to: NodeId) {
        let from = self.ring[i].2;
        if from == to {
            return;
        }
        let members = self.members();
        let gains_member = !self.arcs_of.contains_key(&to);
        let loses_member = self.arcs_of[&from] == 1;
        if members.saturating_add(usize::from(gains_member)).saturating_sub(usize::from(loses_member)) <= self.n
            || members <= self.n
        {
            // Fewer members than N change every arc's home: count again.
            self.move_arc(i, from, to);
            self.recompute();
            return;
        }
        let arcs = self.affected(i);
        let mut home = vec![];
        for &j in &arcs {
            self.home(j, &mut home);
            for node in &home {
                *self.own.get_mut(node).expect("an owner") -= self.widths[j];
            }
        }
        self.move_arc(i, from, to);
        self.own.entry(to).or_insert(0.0);
        for &j in &arcs {
            self.home(j, &mut home);
            for node in &home {
                *self.own.get_mut(node).expect("an owner") += self.widths[j];
            }
        }
        if !self.arcs_of.contains_key(&from) {
            self.own.remove(&from);
        }
    }

    fn move_arc(&mut self, i: usize, from: NodeId, to: NodeId) {
        self.ring[i].2 = to;
        *self.arcs_of.entry(to).or_default() += 1;
        let left = self.arcs_of.get_mut(&from).expect("an owner");
        *left -= 1;
        if *left == 0 {
            self.arcs_of.remove(&from);
        }
    }

    /// How far the shares are from even among `members` (the sum of squared
    /// relative deviations from their mean, plus the worst one, weighted so no
    /// single node is left far out).
    fn spread(&self, members: &[NodeId]) -> f64 {
        let total: f64 = members.iter().map(|m| self.own.get(m).copied().unwrap_or(0.0)).sum();
        let mean = total / members.len() as f64;
        let devs = members.iter().map(|m| (self.own.get(m).copied().unwrap_or(0.0) - mean) / mean);
        let (sq, worst) = devs.fold((0.0, 0.0f64), |(sq, w), d| (sq + d * d, w.max(d.abs())));
        sq + worst * worst * members.len() as f64
    }

    /// Whether `node` owns an arc within N - 1 of arc `i` on either side.
    fn near(&self, i: usize, node: NodeId) -> bool {
        let len = self.ring.len();
        (1..self.n.min(len)).any(|d| self.ring[(i + d) % len].2 == node || self.ring[(i + len - d) % len].2 == node)
    }

    /// The spread after giving arc `i` to `to` (then put back).
    fn spread_if(&mut self, i: usize, to: NodeId, members: &[NodeId]) -> f64 {
        let from = self.ring[i].2;
        self.set_owner(i, to);
        let s = self.spread(members);
        self.set_owner(i, from);
        s
    }
}

/// The joining node `id` (a member of `layout` with no labels yet) takes partitions
/// from the members with the largest shares (see the module docs).
fn take_for(layout: &mut Layout, id: NodeId) {
    let members: Vec<NodeId> = layout.members.keys().copied().collect();
    let others: Vec<(VNode, NodeId)> = layout.labels();
    let mut shares = Shares::new(&others, layout.n);
    let mut current = shares.spread(&members);
    loop {
        // From the member holding the most; its arcs whose neighbours are not the new
        // node's, if it has any.
        let donor = shares
            .own
            .iter()
            .filter(|(m, _)| **m != id && shares.arcs_of.get(m).is_some_and(|&c| c > 1))
            .max_by(|a, b| a.1.total_cmp(b.1).then(b.0.cmp(a.0)))
            .map(|(m, _)| *m);
        let Some(donor) = donor else { break };
        let arcs: Vec<usize> = (0..shares.ring.len()).filter(|&i| shares.ring[i].2 == donor).collect();
        let apart: Vec<usize> = arcs.iter().copied().filter(|&i| !shares.near(i, id)).collect();
        let pick = if apart.is_empty() { arcs } else { apart };
        let mut best: Option<(f64, usize)> = None;
        for i in pick {
            let s = shares.spread_if(i, id, &members);
            if best.is_none_or(|(b, _)| s < b) {
                best = Some((s, i));
            }
        }
        let Some((s, i)) = best else { break };
        if s >= current {
            break;
        }
        current = s;
        shares.set_owner(i, id);
    }
    move_labels(layout, &shares);
}

/// Give a leaving node's labels, one at a time, to the member that then evens the
/// shares best.
fn hand_over(layout: &mut Layout, gone: Vec<VNode>) {
    let members: Vec<NodeId> = layout.members.keys().copied().collect();
    let mut labels = layout.labels();
    labels.extend(gone.iter().map(|&l| (l, PARTITION_LABEL)));
    let mut shares = Shares::new(&labels, layout.n);
    let arcs: Vec<usize> = (0..shares.ring.len()).filter(|&i| shares.ring[i].2 == PARTITION_LABEL).collect();
    for i in arcs {
        let mut best: Option<(f64, NodeId)> = None;
        let apart: Vec<NodeId> = members.iter().copied().filter(|&m| !shares.near(i, m)).collect();
        for &to in if apart.is_empty() { &members } else { &apart } {
            let s = shares.spread_if(i, to, &members);
            if best.is_none_or(|(b, _)| s < b) {
                best = Some((s, to));
            }
        }
        if let Some((_, to)) = best {
            shares.set_owner(i, to);
        }
    }
    move_labels(layout, &shares);
}

/// Rewrite the members' labels from the owners in `shares`.
fn move_labels(layout: &mut Layout, shares: &Shares) {
    for m in layout.members.values_mut() {
        m.labels.clear();
    }
    for &(_, v, owner) in &shares.ring {
        if let Some(m) = layout.members.get_mut(&owner) {
            m.labels.push(v);
        }
    }
}

/// What a change moves: the ranges whose home replicas change, each with where its
/// data is now and which nodes must fetch it, and each node's share before and after.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// The epochs before and after.
    pub epochs: (u64, u64),
    /// Each node's share of the key space as a home replica, before and after (0: not a member).
    pub ownership: BTreeMap<NodeId, (f64, f64)>,
    /// The ranges that move.
    pub moves: Vec<Move>,
    /// Share of the key space (of the N copies) that moves: 1.0 is one whole copy.
    pub moved_share: f64,
    /// Warnings, in words.
    pub warnings: Vec<String>,
    /// Ranges every home replica of which the change replaces: nothing is left to copy
    /// them from, so such a change is refused at commit.
    #[serde(default)]
    pub unsourced: usize,
}

/// The words of the warning about [`Plan::unsourced`] ranges.
const NOTHING_LEFT: &str = "nothing is left to copy them from";

impl Plan {
    /// The warning about ranges nothing is left to copy from, if the plan has any.
    pub fn unsourced_warning(&self) -> Option<&str> {
        self.warnings.iter().find(|w| w.contains(NOTHING_LEFT)).map(String::as_str)
    }
}

/// One range that changes hands: tokens `lo + 1 ..= hi` (wrapping).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Move {
    /// Start (exclusive).
    pub lo: u64,
    /// End (inclusive).
    pub hi: u64,
    /// Its home replicas now: where the new ones fetch it from.
    pub from: Vec<NodeId>,
    /// Home replicas it gains.
    pub to: Vec<NodeId>,
    /// Home replicas it loses (they drop it once every new one has it all).
    pub drop: Vec<NodeId>,
}

impl Plan {
    /// The plan from `before` to `after`.
    pub fn new(before: &Layout, after: &Layout) -> Result<Plan, LayoutError> {
        let (ra, rb) = (before.ring()?, after.ring()?);
        let mut bounds: Vec<u64> = (0..ra.arc_count()).map(|i| ra.arc_span(i).0).collect();
        bounds.extend((0..rb.arc_count()).map(|i| rb.arc_span(i).0));
        bounds.sort_unstable();
        bounds.dedup();
        let mut moves: Vec<Move> = vec![];
        let mut moved = 0.0;
        for (k, &lo) in bounds.iter().enumerate() {
            let hi = bounds[(k + 1) % bounds.len()];
            let (a, b) = (ra.arc_home(ra.arc_of(hi)), rb.arc_home(rb.arc_of(hi)));
            let to: Vec<NodeId> = b.iter().copied().filter(|x| !a.contains(x)).collect();
            if to.is_empty() {
                continue;
            }
            let drop: Vec<NodeId> = a.iter().copied().filter(|x| !b.contains(x)).collect();
            let width = if bounds.len() == 1 { 1.0 } else { hi.wrapping_sub(lo) as f64 / 2f64.powi(64) };
            moved += width * to.len() as f64;
            match moves.last_mut() {
                Some(m) if m.hi == lo && m.from == a && m.to == to && m.drop == drop => m.hi = hi,
                _ => moves.push(Move { lo, hi, from: a.to_vec(), to, drop }),
            }
        }
        let (oa, ob) = (before.ownership(), after.ownership());
        let ids: std::collections::BTreeSet<NodeId> = oa.keys().chain(ob.keys()).copied().collect();
        let ownership: BTreeMap<NodeId, (f64, f64)> = ids
            .into_iter()
            .map(|id| (id, (oa.get(&id).copied().unwrap_or(0.0), ob.get(&id).copied().unwrap_or(0.0))))
            .collect();
        let mut warnings = vec![];
        if after.members.len() < after.n {
            warnings.push(format!(
                "{} members for N = {}: keys have fewer than N distinct home replicas",
                after.members.len(),
                after.n
            ));
        }
        let unsourced: Vec<&Move> =
            moves.iter().filter(|m| m.from.iter().all(|f| after.replaced.contains(f))).collect();
        if let Some(m) = unsourced.first() {
            warnings.push(format!(
                "{} ranges (tokens {:#x}..={:#x} among them) lose every home replica they have ({:?}) to \
                 replaces: {NOTHING_LEFT}, so this cannot be committed; replace one node at a time",
                unsourced.len(),
                m.lo.wrapping_add(1),
                m.hi,
                m.from
            ));
        }
        let unsourced = unsourced.len();
        let mean = ob.values().sum::<f64>() / ob.len().max(1) as f64;
        for (id, share) in &ob {
            if *share > mean * 1.10 {
                warnings.push(format!(
                    "node {id} would hold {:.1} % of the keys, more than its share ({:.1} %) by over 10 %",
                    share * 100.0 / after.n as f64,
                    mean * 100.0 / after.n as f64
                ));
            }
        }
        Ok(Plan { epochs: (before.epoch, after.epoch), ownership, moves, moved_share: moved, warnings, unsourced })
    }
}

/// The worst relative deviation of a member's share from the mean (0.05: within ±5 %).
pub fn imbalance(own: &BTreeMap<NodeId, f64>) -> f64 {
    let mean = own.values().sum::<f64>() / own.len() as f64;
    own.values().map(|v| ((v - mean) / mean).abs()).fold(0.0, f64::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seeds(ids: impl IntoIterator<Item = NodeId>) -> Vec<(NodeId, String)> {
        ids.into_iter().map(|i| (i, format!("10.0.0.{i}:7000"))).collect()
    }

    fn join(l: &Layout, id: NodeId) -> Layout {
        l.apply(&Change::Join { id, addr: format!("10.0.0.{id}:7000") }).unwrap()
    }

    /// The share of the key space whose home replicas changed between two layouts.
    fn moved(a: &Layout, b: &Layout) -> f64 {
        let (ra, rb) = (a.ring().unwrap(), b.ring().unwrap());
        let keys = 20_000;
        let changed = (0..keys)
            .filter(|i| {
                let k = format!("key-{i}");
                let (mut x, mut y) =
                    (ra.preference_list(k.as_bytes()).to_vec(), rb.preference_list(k.as_bytes()).to_vec());
                x.sort_unstable();
                y.sort_unstable();
                x != y
            })
            .count();
        changed as f64 / keys as f64
    }

    #[test]
    fn a_first_layout_is_balanced_and_the_same_on_every_node() {
        for nodes in 3..=7 {
            let l = Layout::initial(&seeds(1..=nodes), PARTITIONS_DEFAULT, 3).unwrap();
            let again = Layout::initial(&seeds((1..=nodes).rev()), PARTITIONS_DEFAULT, 3).unwrap();
            assert_eq!(l, again);
            let worst = imbalance(&l.ownership());
            println!("{nodes} nodes: {worst:.4}");
            assert!(worst <= 0.10, "{nodes} nodes: {worst:.3}");
        }
    }

    #[test]
    fn joins_and_leaves_stay_balanced_and_move_little() {
        let mut l = Layout::initial(&seeds(1..=3), PARTITIONS_DEFAULT, 3).unwrap();
        for id in 4..=7 {
            let next = join(&l, id);
            let worst = imbalance(&next.ownership());
            let m = moved(&l, &next);
            println!("join {id}: imbalance {worst:.3}, moved {m:.3}, took {}", next.members[&id].labels.len());
            assert!(worst <= 0.10, "after joining {id}: {worst:.3}");
            // The least a join moves: every key the new node is a home replica of.
            let least = 3.0 / f64::from(id);
            assert!(m < least + 0.02, "joining {id} changed the homes of {m:.3} of the keys, not {least:.3}");
            l = next;
        }
        for id in [2, 5] {
            let next = l.apply(&Change::Leave { id }).unwrap();
            let worst = imbalance(&next.ownership());
            let m = moved(&l, &next);
            println!("leave {id}: imbalance {worst:.3}, moved {m:.3}");
            assert!(worst <= 0.10, "after {id} left: {worst:.3}");
            let held = l.ownership()[&id];
            assert!(m < held + 0.02, "{id} leaving changed the homes of {m:.3} of the keys; it held {held:.3}");
            l = next;
        }
    }

    #[test]
    fn twenty_nodes_stay_within_ten_percent_through_joins_leaves_and_a_replace() {
        let mut l = Layout::initial(&seeds(1..=20), PARTITIONS_DEFAULT, 3).unwrap();
        assert!(imbalance(&l.ownership()) <= 0.10);
        let changes = [
            Change::Join { id: 21, addr: "h21:7000".into() },
            Change::Leave { id: 7 },
            Change::Replace { old: 3, new: 22, addr: "h22:7000".into() },
            Change::Join { id: 23, addr: "h23:7000".into() },
            Change::Leave { id: 21 },
        ];
        for c in &changes {
            let next = l.apply(c).unwrap();
            let plan = Plan::new(&l, &next).unwrap();
            let worst = imbalance(&next.ownership());
            println!(
                "{c:?}: imbalance {worst:.3}, moved {:.3} of a copy in {} ranges",
                plan.moved_share,
                plan.moves.len()
            );
            assert!(worst <= 0.10, "{c:?}: {worst:.3}");
            assert!(plan.warnings.is_empty(), "{:?}", plan.warnings);
            assert_eq!(next.epoch, l.epoch + 1);
            l = next;
        }
    }

    #[test]
    fn a_replace_moves_exactly_the_old_nodes_ranges_to_the_new_one() {
        let l = Layout::initial(&seeds(1..=5), PARTITIONS_DEFAULT, 3).unwrap();
        let r = l.apply(&Change::Replace { old: 2, new: 9, addr: "h9:7000".into() }).unwrap();
        let plan = Plan::new(&l, &r).unwrap();
        assert!(plan.moves.iter().all(|m| m.to == vec![9] && m.drop == vec![2] && m.from.contains(&2)));
        assert!((plan.moved_share - l.ownership()[&2]).abs() < 1e-9);
        assert_eq!(r.members[&9].labels, l.members[&2].labels);
        assert_eq!(plan.ownership[&9], (0.0, l.ownership()[&2]));
    }

    #[test]
    fn a_join_moves_the_least_a_join_can() {
        // The new node must become a home replica of its share of the keys: that is
        // all that moves (one copy of it), and no other node gains a range.
        let l = Layout::initial(&seeds(1..=5), PARTITIONS_DEFAULT, 3).unwrap();
        let j = join(&l, 6);
        let plan = Plan::new(&l, &j).unwrap();
        assert!(plan.moves.iter().all(|m| m.to == vec![6]));
        let share = j.ownership()[&6];
        assert!((plan.moved_share - share).abs() < 1e-9, "{} vs {share}", plan.moved_share);
        assert!((share - 3.0 / 6.0).abs() < 0.01);
    }

    #[test]
    fn changes_that_cannot_be_made_are_errors_and_change_nothing() {
        let l = Layout::initial(&seeds(1..=3), 64, 3).unwrap();
        let addr = || "h:1".to_string();
        assert_eq!(l.apply(&Change::Join { id: 2, addr: addr() }), Err(LayoutError::AlreadyMember(2)));
        assert_eq!(l.apply(&Change::Join { id: 0, addr: addr() }), Err(LayoutError::ZeroId));
        assert_eq!(l.apply(&Change::Join { id: 4, addr: String::new() }), Err(LayoutError::NoAddress(4)));
        assert_eq!(l.apply(&Change::Leave { id: 9 }), Err(LayoutError::NotMember(9)));
        assert_eq!(l.apply(&Change::Leave { id: 1 }), Err(LayoutError::TooFewNodes { nodes: 2, n: 3 }));
        assert_eq!(l.apply(&Change::Replace { old: 1, new: 3, addr: addr() }), Err(LayoutError::AlreadyMember(3)));
        assert_eq!(l.apply(&Change::Replace { old: 8, new: 9, addr: addr() }), Err(LayoutError::NotMember(8)));
        assert_eq!(Layout::initial(&seeds(1..=3), 2, 3), Err(LayoutError::BadPartitions(2)));
        let mut bad = l.clone();
        let stolen = bad.members.get_mut(&1).unwrap().labels[0];
        bad.members.get_mut(&2).unwrap().labels.push(stolen);
        assert!(bad.check().is_err(), "a label owned twice");
    }

    #[test]
    fn a_plan_that_replaces_every_home_of_a_range_says_it_cannot_be_committed() {
        let l = Layout::initial(&seeds(1..=3), 64, 3).unwrap();
        let one = l.apply(&Change::Replace { old: 1, new: 4, addr: "h:4".into() }).unwrap();
        assert_eq!(Plan::new(&l, &one).unwrap().unsourced, 0, "two homes of every range stay");
        let mut all = one.clone();
        for (old, new) in [(2, 5), (3, 6)] {
            all = all.apply(&Change::Replace { old, new, addr: format!("h:{new}") }).unwrap();
        }
        all.epoch = l.epoch + 1;
        all.replaced = vec![1, 2, 3];
        let plan = Plan::new(&l, &all).unwrap();
        assert_eq!(plan.unsourced, plan.moves.len(), "{plan:?}");
        assert!(plan.unsourced > 0 && plan.warnings.iter().any(|w| w.contains("nothing is left")), "{plan:?}");
    }

    #[test]
    fn shares_kept_up_to_date_equal_shares_counted_again() {
        let l = Layout::initial(&seeds(1..=6), 256, 3).unwrap();
        let mut s = Shares::new(&l.labels(), 3);
        let mut x = 12345u64;
        // Moves among 7 owners, then onto 4 (draining 3 and crossing N): the kept
        // shares, never counted again in between, agree with a count from scratch.
        for (steps, owners) in [(400, 7u32), (600, 4)] {
            for _ in 0..steps {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let (i, to) = ((x >> 33) as usize % s.ring.len(), 1 + (x >> 20) as u32 % owners);
                s.set_owner(i, to);
            }
            let kept = s.ownership();
            s.recompute();
            assert_eq!(kept.keys().collect::<Vec<_>>(), s.ownership().keys().collect::<Vec<_>>(), "no stale owner");
            for (node, v) in s.ownership() {
                assert!((kept[&node] - v).abs() < 1e-9, "node {node}: kept {} counted {v}", kept[&node]);
            }
        }
    }

    #[test]
    fn the_cut_makes_every_partition_asked_for_and_bad_inputs_are_errors() {
        for p in [1, 2, 3, 7, 64, 1000, 1024, 4099] {
            assert_eq!(cut(p).len(), p as usize, "{p} partitions");
        }
        assert!(Layout::initial(&seeds([1]), 1, 1).is_ok());
        assert_eq!(Layout::initial(&[], 64, 1), Err(LayoutError::NoMembers));
        assert_eq!(Layout::initial(&seeds(1..=17), 64, 17), Err(LayoutError::BadN(17)));
        // A layout with no partition to spare refuses a join rather than leave a member without one.
        let tight = Layout::initial(&seeds(1..=3), 3, 3).unwrap();
        assert_eq!(tight.apply(&Change::Join { id: 4, addr: "h4:1".into() }), Err(LayoutError::NothingToTake(4)));
    }

    #[test]
    fn the_legacy_layout_places_keys_as_before() {
        let l = Layout::legacy(&seeds(1..=5), 64, 3).unwrap();
        let (a, b) = (l.ring().unwrap(), Ring::new(&[1, 2, 3, 4, 5], 64, 3).unwrap());
        // The same fingerprint too: nodes before and after layouts compare trees.
        assert_eq!(a.fingerprint(), b.fingerprint());
        for i in 0..2000 {
            let k = format!("key-{i}");
            assert_eq!(a.preference_list(k.as_bytes()), b.preference_list(k.as_bytes()));
        }
    }
}
