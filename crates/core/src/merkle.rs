//! Anti-entropy hash trees (Merkle trees with XOR, as in Riak's Tictac AAE).
//!
//! Keys are grouped into *ranges*: the arcs of the ring that share the same set
//! of home replicas. A node keeps one tree per range it is a home replica of:
//!
//! - a leaf per slice of an arc: each arc of the range is cut into [`SLICES`]
//!   equal spans of tokens, so a leaf's keys are one contiguous span of the
//!   store's token order and can be listed with a range scan;
//! - a leaf's hash is the XOR of the [`digest`]s of its keys, and the range's
//!   root is the XOR of its leaves.
//!
//! XOR makes every update O(1) and order-free: a write replaces the key's old
//! digest with its new one in its leaf and the root (`h ^= old ^ new`), so the
//! trees never need rebuilding in the steady state; they are built once at start
//! by a scan of the store. Two replicas of a range compare roots, then leaves,
//! then the keys of the leaves that differ (see `router::antientropy` for the exchange).

use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hash, Hasher};

use qkv_proto::{DvvSet, NodeId};

use crate::ring::{Ring, StableHasher};

/// Leaves per arc.
pub const SLICES: u64 = 16;

/// A range's index in the ring's sorted list of distinct replica sets.
pub type RangeId = u32;

/// What a replica's state of a key hashes to in the trees: the key, its clock
/// cloud and its siblings' dots. Values need not be hashed: a dot names one write.
pub fn digest(key: &[u8], set: &DvvSet) -> u64 {
    let mut h = StableHasher.build_hasher();
    key.hash(&mut h);
    set.clock().0.hash(&mut h);
    set.cloud().hash(&mut h);
    for s in set.siblings() {
        s.dot.hash(&mut h);
    }
    // 0 is "no key" in a leaf's XOR; remap the one digest that would vanish.
    h.finish().max(1)
}

/// One range's tree.
#[derive(Clone, Debug)]
struct Tree {
    home: Vec<NodeId>,
    /// Global arc indices, ascending; leaf `p * SLICES + s` is slice `s` of `arcs[p]`.
    arcs: Vec<usize>,
    leaves: Vec<u64>,
    root: u64,
    keys: u64,
}

/// Every tree of one node, and where each arc's keys go.
#[derive(Clone, Debug)]
pub struct Trees {
    trees: BTreeMap<RangeId, Tree>,
    /// Per global arc: its range and position in that range, when this node is home.
    arc_loc: Vec<Option<(RangeId, usize)>>,
    /// Per global arc: its range.
    arc_range: Vec<RangeId>,
}

impl Trees {
    /// Empty trees for the ranges `me` is a home replica of.
    pub fn new(ring: &Ring, me: NodeId) -> Trees {
        let mut homes: Vec<&[NodeId]> = (0..ring.arc_count()).map(|i| ring.arc_home(i)).collect();
        homes.sort_unstable();
        homes.dedup();
        let id_of: BTreeMap<&[NodeId], RangeId> = homes.iter().enumerate().map(|(i, h)| (*h, i as RangeId)).collect();
        let mut trees: BTreeMap<RangeId, Tree> = BTreeMap::new();
        let mut arc_loc = vec![None; ring.arc_count()];
        let mut arc_range = Vec::with_capacity(ring.arc_count());
        for (arc, loc) in arc_loc.iter_mut().enumerate() {
            let home = ring.arc_home(arc);
            let id = id_of[home];
            arc_range.push(id);
            if !home.contains(&me) {
                continue;
            }
            let t = trees.entry(id).or_insert_with(|| Tree {
                home: home.to_vec(),
                arcs: vec![],
                leaves: vec![],
                root: 0,
                keys: 0,
            });
            *loc = Some((id, t.arcs.len()));
            t.arcs.push(arc);
            t.leaves.extend(std::iter::repeat_n(0, SLICES as usize));
        }
        Trees { trees, arc_loc, arc_range }
    }

    /// The range and leaf of a token, when this node is one of its home replicas.
    pub fn locate(&self, ring: &Ring, token: u64) -> Option<(RangeId, u32)> {
        let arc = ring.arc_of(token);
        let (range, pos) = self.arc_loc[arc]?;
        let (lo, width) = ring.arc_span(arc);
        Some((range, (pos as u64 * SLICES + slice_of(token.wrapping_sub(lo).wrapping_sub(1), width)) as u32))
    }

    /// The range of a token, whoever its home replicas are.
    pub fn range_of(&self, ring: &Ring, token: u64) -> RangeId {
        self.arc_range[ring.arc_of(token)]
    }

    /// A key at `token` changed from digest `old` to `new` (`None`: absent).
    pub fn update(&mut self, ring: &Ring, token: u64, old: Option<u64>, new: Option<u64>) {
        let Some((range, leaf)) = self.locate(ring, token) else { return };
        let t = self.trees.get_mut(&range).expect("located ranges exist");
        let delta = old.unwrap_or(0) ^ new.unwrap_or(0);
        t.leaves[leaf as usize] ^= delta;
        t.root ^= delta;
        match (old, new) {
            (None, Some(_)) => t.keys += 1,
            (Some(_), None) => t.keys = t.keys.saturating_sub(1),
            _ => {}
        }
    }

    /// The ranges this node is home for.
    pub fn ranges(&self) -> impl Iterator<Item = RangeId> + '_ {
        self.trees.keys().copied()
    }

    /// The ranges this node shares with `peer`.
    pub fn shared_with(&self, peer: NodeId) -> Vec<RangeId> {
        self.trees.iter().filter(|(_, t)| t.home.contains(&peer)).map(|(id, _)| *id).collect()
    }

    /// A range's home replicas (empty when this node is not one of them).
    pub fn home(&self, range: RangeId) -> &[NodeId] {
        self.trees.get(&range).map_or(&[], |t| &t.home)
    }

    /// A range's root hash.
    pub fn root(&self, range: RangeId) -> Option<u64> {
        self.trees.get(&range).map(|t| t.root)
    }

    /// A range's leaf hashes.
    pub fn leaves(&self, range: RangeId) -> Option<&[u64]> {
        self.trees.get(&range).map(|t| t.leaves.as_slice())
    }

    /// Keys this node holds in a range.
    pub fn keys(&self, range: RangeId) -> u64 {
        self.trees.get(&range).map_or(0, |t| t.keys)
    }

    /// The token spans (inclusive, not wrapping) holding a leaf's keys; empty for a
    /// leaf that holds no token, or one that does not exist.
    pub fn leaf_spans(&self, ring: &Ring, range: RangeId, leaf: u32) -> Vec<(u64, u64)> {
        let Some(t) = self.trees.get(&range) else { return vec![] };
        let (pos, slice) = (leaf as u64 / SLICES, leaf as u64 % SLICES);
        let Some(&arc) = t.arcs.get(pos as usize) else { return vec![] };
        let (lo, width) = ring.arc_span(arc);
        let Some((first, last)) = slice_offsets(slice, width) else { return vec![] };
        let (a, b) = (lo.wrapping_add(1).wrapping_add(first), lo.wrapping_add(1).wrapping_add(last));
        if a <= b { vec![(a, b)] } else { vec![(a, u64::MAX), (0, b)] }
    }
}

fn width128(width: u64) -> u128 {
    if width == 0 { 1u128 << 64 } else { u128::from(width) }
}

/// The slice of an offset `off` (0-based) into an arc of `width` tokens.
fn slice_of(off: u64, width: u64) -> u64 {
    (u128::from(off) * u128::from(SLICES) / width128(width)) as u64
}

/// The first and last offsets of `slice` in an arc of `width`, if it holds any.
fn slice_offsets(slice: u64, width: u64) -> Option<(u64, u64)> {
    let w = width128(width);
    let s = u128::from(SLICES);
    let first = (u128::from(slice) * w).div_ceil(s);
    let end = (u128::from(slice + 1) * w).div_ceil(s);
    (end > first).then(|| (first as u64, (end - 1) as u64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use qkv_proto::VersionVector;

    use crate::ring::token;

    proptest! {
        #[test]
        fn slices_partition_an_arc(off in any::<u64>(), width in any::<u64>()) {
            let off = if width == 0 { off } else { off % width };
            let s = slice_of(off, width);
            prop_assert!(s < SLICES);
            let (first, last) = slice_offsets(s, width).unwrap();
            prop_assert!(first <= off && off <= last);
        }
    }

    #[test]
    fn small_arcs_have_empty_slices_and_no_overlap() {
        for width in 1..40u64 {
            let mut covered = 0;
            let mut next = 0;
            for s in 0..SLICES {
                if let Some((a, b)) = slice_offsets(s, width) {
                    assert_eq!(a, next, "slices are contiguous");
                    covered += b - a + 1;
                    next = b + 1;
                }
            }
            assert_eq!(covered, width);
        }
    }

    #[test]
    fn every_key_lies_in_its_leaf_spans() {
        let ring = Ring::new(&[1, 2, 3, 4, 5], 16, 3).unwrap();
        let trees = Trees::new(&ring, 1);
        let mut located = 0;
        for i in 0..5000 {
            let key = format!("k{i}").into_bytes();
            let t = token(&key);
            let home = ring.preference_list(&key);
            match trees.locate(&ring, t) {
                None => assert!(!home.contains(&1)),
                Some((range, leaf)) => {
                    located += 1;
                    assert!(home.contains(&1));
                    let mut sorted = home.to_vec();
                    sorted.sort_unstable();
                    assert_eq!(trees.home(range), sorted.as_slice());
                    assert_eq!(trees.range_of(&ring, t), range);
                    let spans = trees.leaf_spans(&ring, range, leaf);
                    assert!(spans.iter().any(|&(a, b)| a <= t && t <= b), "key {i} outside its leaf");
                }
            }
        }
        assert!(located > 0);
    }

    #[test]
    fn trees_are_order_free_and_incremental() {
        let ring = Ring::new(&[1, 2, 3], 8, 3).unwrap();
        let mut a = Trees::new(&ring, 1);
        let mut b = Trees::new(&ring, 2);
        let states: Vec<(Vec<u8>, DvvSet)> = (0..200)
            .map(|i| {
                let mut s = DvvSet::new();
                s.update(&VersionVector::new(), Some(vec![i as u8]), 1);
                (format!("k{i}").into_bytes(), s)
            })
            .collect();
        for (k, s) in &states {
            a.update(&ring, token(k), None, Some(digest(k, s)));
        }
        for (k, s) in states.iter().rev() {
            b.update(&ring, token(k), None, Some(digest(k, s)));
        }
        let range = a.ranges().next().unwrap();
        assert_eq!(a.root(range), b.root(range));
        assert_eq!(a.leaves(range), b.leaves(range));
        assert_eq!(a.keys(range), 200);
        // One key moves on: its leaf and the root differ, nothing else.
        let (k, s) = &states[7];
        let (s2, _, _) =
            crate::replica::coordinate(Some(s.clone()), &qkv_proto::Seen::new(), Some(b"x".to_vec()), 2, 0, None);
        b.update(&ring, token(k), Some(digest(k, s)), Some(digest(k, &s2)));
        assert_ne!(a.root(range), b.root(range));
        let diff = a.leaves(range).unwrap().iter().zip(b.leaves(range).unwrap()).filter(|(x, y)| x != y).count();
        assert_eq!(diff, 1);
        // Moving it back restores equality.
        b.update(&ring, token(k), Some(digest(k, &s2)), Some(digest(k, s)));
        assert_eq!(a.root(range), b.root(range));
    }
}
