//! Placement: consistent hashing with virtual nodes on the `hashring` crate.
//!
//! Each physical node gets `vnodes` tokens. A key's *walk* is the list of all
//! distinct physical nodes met clockwise from its token; the first N are its
//! home replicas (the preference list), the rest are stand-in candidates.
//! Walks are precomputed per vnode when the ring is built, so a lookup is one
//! binary search (inside `hashring`) and one table read.
//!
//! Hashing uses SipHash-1-3 with fixed keys ([`StableHasher`]), so every node,
//! whatever its build, places keys the same way.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::BuildHasher;

use hashring::HashRing;
use qkv_proto::NodeId;
use siphasher::sip::SipHasher13;

/// Default virtual nodes per physical node.
pub const VNODES_DEFAULT: u32 = 64;
/// Most virtual nodes per physical node accepted.
pub const VNODES_MAX: u32 = 4096;
/// Most labels a ring holds.
pub const LABELS_MAX: usize = 65_536;
/// Stand-ins a key's walk lists after its N home replicas: a sloppy write looks no
/// further for nodes to hold its hints (a cluster of up to N + this many nodes
/// walks every node, as before).
pub const WALK_STANDINS: usize = 16;

/// SipHash-1-3 with fixed keys: stable across processes, builds and platforms.
#[derive(Clone, Copy, Debug, Default)]
pub struct StableHasher;

impl BuildHasher for StableHasher {
    type Hasher = SipHasher13;
    fn build_hasher(&self) -> SipHasher13 {
        SipHasher13::new_with_keys(0x7175_6f72_756d_6b76, 0x7269_6e67_0000_0001)
    }
}

/// A virtual node's label: its position on the ring is the hash of the label.
/// A label keeps its position when its owner changes (a replaced node's new
/// owner takes its labels, and with them exactly its ranges).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct VNode {
    /// The node the label was made for (not necessarily its owner now).
    pub node: NodeId,
    /// Which of that node's labels.
    pub index: u32,
}

impl VNode {
    /// The label's token: where on the ring its arc ends.
    pub fn token(&self) -> u64 {
        StableHasher.hash_one(self)
    }
}

/// A ring configuration that cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RingError {
    /// Fewer nodes than the replication factor.
    #[error("replication factor {n} needs at least {n} nodes, the cluster has {nodes}")]
    TooFewNodes {
        /// Replication factor.
        n: usize,
        /// Nodes given.
        nodes: usize,
    },
    /// Vnodes out of range.
    #[error("vnodes must be between 1 and {VNODES_MAX}, got {0}")]
    BadVnodes(u32),
    /// Replication factor zero.
    #[error("replication factor must be at least 1")]
    ZeroReplication,
    /// The same node id twice.
    #[error("node id {0} appears twice")]
    DuplicateNode(NodeId),
    /// The same vnode label twice, or too many for one node.
    #[error("bad vnode labels: {0}")]
    BadLabels(String),
}

/// The ring: who holds which keys.
#[derive(Clone)]
pub struct Ring {
    ring: HashRing<VNode, StableHasher>,
    /// Each label's walk: its owner first, then the other distinct owners clockwise.
    walks: HashMap<VNode, Vec<NodeId>>,
    /// Each vnode's token and share of the hash space, for ownership reports.
    arcs: Vec<(VNode, u64)>,
    /// Sorted tokens: arc `i` holds the keys whose token is in `(tokens[i-1], tokens[i]]`.
    tokens: Vec<u64>,
    /// Each arc's home replicas, sorted by id (the arc's replica set).
    arc_homes: Vec<Vec<NodeId>>,
    n: usize,
    vnodes: u32,
    fingerprint: u64,
}

/// A key's position on the ring: what `hashring` hashes to place it.
pub fn token(key: &[u8]) -> u64 {
    StableHasher.hash_one(key)
}

/// The scan position just past `key` (see [`Store::scan`](crate::Store::scan)): its
/// token, and the smallest key after it.
pub fn after(key: &[u8]) -> (u64, Vec<u8>) {
    let mut next = Vec::with_capacity(key.len() + 1);
    next.extend_from_slice(key);
    next.push(0);
    (token(key), next)
}

impl Ring {
    /// Build a ring of `members` with `vnodes` tokens each and replication factor `n`:
    /// node `m` owns the labels `(m, 0..vnodes)` (the placement of every release so far).
    pub fn new(members: &[NodeId], vnodes: u32, n: usize) -> Result<Ring, RingError> {
        if vnodes == 0 || vnodes > VNODES_MAX {
            return Err(RingError::BadVnodes(vnodes));
        }
        let distinct: BTreeSet<NodeId> = members.iter().copied().collect();
        if distinct.len() != members.len() {
            let dup = members.iter().find(|m| members.iter().filter(|x| x == m).count() > 1);
            return Err(RingError::DuplicateNode(*dup.unwrap_or(&0)));
        }
        let labels: Vec<(VNode, NodeId)> =
            members.iter().flat_map(|&node| (0..vnodes).map(move |index| (VNode { node, index }, node))).collect();
        let mut ids: Vec<NodeId> = members.to_vec();
        ids.sort_unstable();
        let fingerprint = StableHasher.hash_one((&ids, vnodes, n));
        Self::build(&labels, n, vnodes, fingerprint)
    }

    /// Build a ring from explicit labels and their owners (a cluster layout).
    pub fn from_labels(labels: &[(VNode, NodeId)], n: usize) -> Result<Ring, RingError> {
        let mut sorted = labels.to_vec();
        sorted.sort_unstable();
        if sorted.windows(2).any(|w| w[0].0 == w[1].0) {
            return Err(RingError::BadLabels("a label appears twice".into()));
        }
        let mut per_node: BTreeMap<NodeId, u32> = BTreeMap::new();
        for l in &sorted {
            *per_node.entry(l.1).or_default() += 1;
        }
        let most = per_node.values().copied().max().unwrap_or(0);
        if sorted.len() > LABELS_MAX {
            return Err(RingError::BadLabels(format!("{} labels, more than {LABELS_MAX}", sorted.len())));
        }
        // The labels every release before layouts placed keys with: the same ring, and
        // the same fingerprint, so nodes of both kinds compare anti-entropy trees.
        let ids: Vec<NodeId> = per_node.keys().copied().collect();
        let legacy =
            per_node.values().all(|&c| c == most) && sorted.iter().all(|(v, owner)| v.node == *owner && v.index < most);
        if legacy {
            return Self::new(&ids, most, n);
        }
        let fingerprint = StableHasher.hash_one((&sorted, n));
        Self::build(&sorted, n, most, fingerprint)
    }

    fn build(labels: &[(VNode, NodeId)], n: usize, vnodes: u32, fingerprint: u64) -> Result<Ring, RingError> {
        if n == 0 {
            return Err(RingError::ZeroReplication);
        }
        let members: BTreeSet<NodeId> = labels.iter().map(|l| l.1).collect();
        if members.len() < n {
            return Err(RingError::TooFewNodes { n, nodes: members.len() });
        }
        let mut ring = HashRing::with_hasher(StableHasher);
        ring.batch_add(labels.iter().map(|l| l.0).collect());

        let mut tokens: Vec<(u64, VNode, NodeId)> = labels.iter().map(|&(v, owner)| (v.token(), v, owner)).collect();
        tokens.sort_by_key(|(t, v, _)| (*t, *v));
        // Two labels at one token would make a zero-width arc, and `hashring` and
        // `arc_of` could pick different ones of them.
        if tokens.windows(2).any(|w| w[0].0 == w[1].0) {
            return Err(RingError::BadLabels("two labels hash to the same token".into()));
        }
        // Each arc's walk: the owners in the order they are first met clockwise from it,
        // the first N home, then stand-ins, at most `WALK_STANDINS` of them. Built in one
        // pass backwards over the ring twice round: the owners most recently met going
        // backwards are the first met going forwards, and one that falls past the walk's
        // length comes back only by being met again, at the front.
        let len = tokens.len();
        let keep = members.len().min(n + WALK_STANDINS);
        let mut front: Vec<NodeId> = Vec::with_capacity(keep + 1);
        let mut walk_at: Vec<Vec<NodeId>> = vec![vec![]; len];
        for i in (0..2 * len).rev() {
            let owner = tokens[i % len].2;
            front.retain(|&o| o != owner);
            front.insert(0, owner);
            front.truncate(keep);
            if i < len {
                walk_at[i] = front.clone();
            }
        }
        let mut walks = HashMap::with_capacity(len);
        let mut arcs = Vec::with_capacity(len);
        for (i, walk) in walk_at.into_iter().enumerate() {
            walks.insert(tokens[i].1, walk);
            // Vnode i owns the keys hashing into (token[i-1], token[i]], wrapping at the ends.
            let prev = if i == 0 { tokens[len - 1].0 } else { tokens[i - 1].0 };
            arcs.push((tokens[i].1, tokens[i].0.wrapping_sub(prev)));
        }
        let arc_homes = tokens
            .iter()
            .map(|(_, v, _)| {
                let mut home = walks[v][..n].to_vec();
                home.sort_unstable();
                home
            })
            .collect();
        let tokens = tokens.iter().map(|(t, _, _)| *t).collect();
        Ok(Ring { ring, walks, arcs, tokens, arc_homes, n, vnodes, fingerprint })
    }

    /// Replication factor.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Virtual nodes per physical node.
    pub fn vnodes(&self) -> u32 {
        self.vnodes
    }

    /// Distinct nodes clockwise from the key: home replicas first, then stand-in
    /// candidates (every node, up to N + [`WALK_STANDINS`]).
    pub fn walk(&self, key: &[u8]) -> &[NodeId] {
        // The ring is never empty (checked in `new`) and every vnode has a walk.
        let vnode = self.ring.get(&key).expect("ring is not empty");
        &self.walks[vnode]
    }

    /// The key's home replicas: the first N distinct nodes clockwise from its token.
    pub fn preference_list(&self, key: &[u8]) -> &[NodeId] {
        &self.walk(key)[..self.n]
    }

    /// Identifies the ring's layout (members, vnodes, N): peers compare it before
    /// comparing anti-entropy trees, which only line up on the same ring.
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    /// Number of arcs (every vnode's token ends one).
    pub fn arc_count(&self) -> usize {
        self.tokens.len()
    }

    /// The arc holding `token`: the first token at or after it, wrapping (as `hashring` places keys).
    pub fn arc_of(&self, token: u64) -> usize {
        let i = self.tokens.partition_point(|&t| t < token);
        if i == self.tokens.len() { 0 } else { i }
    }

    /// Arc `i` as `(lo, width)`: it holds tokens `lo + 1 ..= lo + width` (wrapping);
    /// `width` 0 means the whole ring (a single arc).
    pub fn arc_span(&self, i: usize) -> (u64, u64) {
        let hi = self.tokens[i];
        let lo = if i == 0 { self.tokens[self.tokens.len() - 1] } else { self.tokens[i - 1] };
        (lo, hi.wrapping_sub(lo))
    }

    /// Arc `i`'s home replicas, sorted by id.
    pub fn arc_home(&self, i: usize) -> &[NodeId] {
        &self.arc_homes[i]
    }

    /// Each preference list (home replicas in walk order) with the share of the key
    /// space placed on it (the shares sum to 1): how often a key's first home is each
    /// node, and who follows it. Sorted by list.
    pub fn preference_shares(&self) -> Vec<(Vec<NodeId>, f64)> {
        let mut out: BTreeMap<&[NodeId], f64> = BTreeMap::new();
        for (vnode, arc) in &self.arcs {
            let share = if self.arcs.len() == 1 { 1.0 } else { *arc as f64 / 2f64.powi(64) };
            *out.entry(&self.walks[vnode][..self.n]).or_default() += share;
        }
        out.into_iter().map(|(list, share)| (list.to_vec(), share)).collect()
    }

    /// For each node, the share of the key space it is a home replica for (sums to N).
    pub fn ownership(&self) -> BTreeMap<NodeId, f64> {
        let mut out: BTreeMap<NodeId, f64> = BTreeMap::new();
        for (vnode, arc) in &self.arcs {
            // A single-vnode ring's arc wraps to 0: it owns everything.
            let share = if self.arcs.len() == 1 { 1.0 } else { *arc as f64 / 2f64.powi(64) };
            for node in &self.walks[vnode][..self.n] {
                *out.entry(*node).or_default() += share;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(count: usize) -> impl Iterator<Item = Vec<u8>> {
        (0..count).map(|i| format!("key-{i}").into_bytes())
    }

    #[test]
    fn preference_lists_hold_n_distinct_nodes() {
        for (members, n) in [(vec![1, 2, 3], 3), (vec![1, 2, 3, 4, 5], 3), (vec![1, 2, 3, 4, 5, 6, 7], 5)] {
            let ring = Ring::new(&members, 64, n).unwrap();
            for k in keys(2000) {
                let p = ring.preference_list(&k);
                let set: BTreeSet<_> = p.iter().collect();
                assert_eq!(set.len(), n);
                assert_eq!(ring.walk(&k).len(), members.len());
            }
        }
    }

    #[test]
    fn removing_a_node_moves_only_its_keys() {
        let all = [1, 2, 3, 4, 5];
        let before = Ring::new(&all, 64, 3).unwrap();
        let after = Ring::new(&[1, 2, 3, 5], 64, 3).unwrap();
        let mut moved = 0;
        for k in keys(20_000) {
            let (b, a) = (before.preference_list(&k), after.preference_list(&k));
            if !b.contains(&4) {
                assert_eq!(b, a, "a key node 4 did not hold moved");
            } else {
                // The surviving replicas keep the key; only node 4's place is taken.
                let kept: Vec<_> = b.iter().filter(|&&x| x != 4).collect();
                assert!(kept.iter().all(|x| a.contains(x)));
                moved += 1;
            }
        }
        assert!(moved > 0);
    }

    #[test]
    fn preference_shares_are_how_often_keys_land_on_each_list() {
        for (members, n) in [(vec![1, 2, 3], 3), (vec![1, 2, 3, 4, 5], 3)] {
            let ring = Ring::new(&members, 64, n).unwrap();
            let shares = ring.preference_shares();
            assert!((shares.iter().map(|s| s.1).sum::<f64>() - 1.0).abs() < 1e-9);
            assert!(shares.iter().all(|(list, _)| list.len() == n));
            let mut counts: BTreeMap<Vec<NodeId>, usize> = BTreeMap::new();
            for k in keys(60_000) {
                *counts.entry(ring.preference_list(&k).to_vec()).or_default() += 1;
            }
            assert_eq!(counts.len(), shares.len(), "every list keys land on, and no other");
            for (list, share) in &shares {
                let measured = counts.get(list).copied().unwrap_or(0) as f64 / 60_000.0;
                assert!((measured - share).abs() < 0.01, "{list:?}: keys {measured} vs arcs {share}");
            }
        }
        let one = Ring::new(&[7], 8, 1).unwrap().preference_shares();
        assert!(one.len() == 1 && one[0].0 == vec![7] && (one[0].1 - 1.0).abs() < 1e-12, "{one:?}");
    }

    #[test]
    fn ownership_is_spread_evenly_across_five_nodes() {
        let ring = Ring::new(&[1, 2, 3, 4, 5], 64, 3).unwrap();
        let own = ring.ownership();
        let total: f64 = own.values().sum();
        assert!((total - 3.0).abs() < 1e-6, "ownership sums to N, got {total}");
        let mean = total / 5.0;
        let max = own.values().cloned().fold(0.0, f64::max);
        let min = own.values().cloned().fold(1.0, f64::min);
        println!("ownership 5 nodes, 64 vnodes: max/mean = {:.3}, min/mean = {:.3}", max / mean, min / mean);
        assert!(max / mean < 1.25 && min / mean > 0.75, "{own:?}");
        // Cross-check the arcs against real keys.
        let mut counts: BTreeMap<NodeId, usize> = BTreeMap::new();
        for k in keys(50_000) {
            for n in ring.preference_list(&k) {
                *counts.entry(*n).or_default() += 1;
            }
        }
        for (node, c) in counts {
            let measured = c as f64 / 50_000.0;
            assert!((measured - own[&node]).abs() < 0.02, "node {node}: keys {measured} vs arcs {}", own[&node]);
        }
    }

    #[test]
    fn placement_is_stable() {
        // Pinned so a change of hasher or layout (which would move every key) fails loudly.
        let ring = Ring::new(&[1, 2, 3, 4, 5], 64, 3).unwrap();
        let a = ring.preference_list(b"hello").to_vec();
        let again = Ring::new(&[5, 4, 3, 2, 1], 64, 3).unwrap();
        assert_eq!(a, again.preference_list(b"hello"));
    }

    #[test]
    fn arcs_agree_with_hashring_placement() {
        for (members, vnodes) in [(vec![1, 2, 3], 64), (vec![1, 2, 3, 4, 5], 16), (vec![9], 1)] {
            let n = members.len().min(3);
            let ring = Ring::new(&members, vnodes, n).unwrap();
            for k in keys(5000) {
                let t = token(&k);
                let arc = ring.arc_of(t);
                let mut home = ring.preference_list(&k).to_vec();
                home.sort_unstable();
                assert_eq!(ring.arc_home(arc), home.as_slice());
                let (lo, width) = ring.arc_span(arc);
                let off = t.wrapping_sub(lo);
                assert!(off >= 1 && (width == 0 || off <= width), "token {t} outside arc {arc}");
            }
        }
        let a = Ring::new(&[1, 2, 3], 64, 3).unwrap().fingerprint();
        assert_eq!(a, Ring::new(&[3, 2, 1], 64, 3).unwrap().fingerprint());
        assert_ne!(a, Ring::new(&[1, 2, 3], 32, 3).unwrap().fingerprint());
    }

    #[test]
    fn a_large_ring_walks_n_home_replicas_and_a_bounded_number_of_stand_ins() {
        let members: Vec<NodeId> = (1..=40).collect();
        let ring = Ring::new(&members, 8, 3).unwrap();
        for k in keys(500) {
            let walk = ring.walk(&k);
            assert_eq!(walk.len(), 3 + WALK_STANDINS);
            assert_eq!(walk.iter().collect::<BTreeSet<_>>().len(), walk.len(), "distinct");
            // The first met clockwise, in order: the same as walking the arcs one by one.
            let mut slow = vec![];
            let mut arc = ring.arc_of(token(&k));
            while slow.len() < walk.len() {
                let owner = ring.walks[&ring.arcs[arc].0][0];
                if !slow.contains(&owner) {
                    slow.push(owner);
                }
                arc = (arc + 1) % ring.arc_count();
            }
            assert_eq!(walk, slow.as_slice());
        }
    }

    #[test]
    fn bad_configs_are_errors() {
        assert_eq!(Ring::new(&[1, 2], 64, 3).err(), Some(RingError::TooFewNodes { n: 3, nodes: 2 }));
        assert_eq!(Ring::new(&[1, 2, 3], 0, 3).err(), Some(RingError::BadVnodes(0)));
        assert_eq!(Ring::new(&[1, 1, 3], 8, 1).err(), Some(RingError::DuplicateNode(1)));
        assert_eq!(Ring::new(&[1], 8, 0).err(), Some(RingError::ZeroReplication));
        assert!(Ring::new(&[7], 1, 1).unwrap().ownership()[&7] == 1.0);
    }
}
