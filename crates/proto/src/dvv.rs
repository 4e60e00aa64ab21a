//! Dotted version vector sets (Almeida et al. 2014; Riak 2.0's `dvvset`).
//!
//! A [`DvvSet`] is the full state of one key on one replica: a causal context
//! (what the replica has seen: a [`VersionVector`] over [`Actor`]s, a node id and
//! its disk epoch, plus a *cloud* of single dots outside it) and the sibling values
//! still alive in it, each tagged with the [`Dot`] of the write that made it.
//!
//! Invariants (checked by [`DvvSet::is_valid`] and the property tests):
//! - every sibling's dot is covered by the set's clock;
//! - no two siblings share a dot;
//! - siblings and cloud dots are kept sorted, and no cloud dot is covered by the
//!   clock, so equal states compare equal.
//!
//! Merge laws: [`DvvSet::sync`] is commutative, associative and idempotent
//! (a join-semilattice: the causal contexts are unioned, and a sibling survives
//! when both sides hold it or the other side has not seen it), so replicas can
//! exchange whole states in any order, any number of times, and converge. The
//! only other way state changes is [`DvvSet::apply`], the coordinator's local write.
//!
//! Why a clock entry `a: c` may stand for "every dot of `a` up to `c`" although
//! counters are per node, not per key: the dots of one actor for one key are all
//! minted by that actor from its own durable state of the key, so the actor's own
//! entry is always truthful, and replicas only ever exchange *whole* states. What
//! is not truthful is a clock built from what a *client* saw: a writer that saw
//! only its own write `a: 7` has not seen `a: 3`, a concurrent write of the same
//! key. So what a writer saw is a [`Seen`]: a version vector plus dots kept apart,
//! and a state records dots it was told were overwritten, but has not received
//! yet, in its cloud, until their states arrive and the clock covers them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A node id.
pub type NodeId = u32;

/// The actor in version vectors: a node *and the epoch of its disk*.
///
/// A node takes a fresh random epoch whenever it starts on an empty disk, so a
/// node whose data was wiped never mints a dot it minted before the wipe (Riak's
/// "doomstone" loss, basho/riak_kv#679): its new writes become siblings of the old
/// ones instead of silently replacing values it never saw. Layout: the epoch in
/// the high 32 bits, the node id in the low 32. Clocks grow by one entry per wipe.
pub type Actor = u64;

/// The actor of `node` in `epoch`.
pub fn actor(node: NodeId, epoch: u32) -> Actor {
    (u64::from(epoch) << 32) | u64::from(node)
}

/// The node an actor belongs to.
pub fn actor_node(a: Actor) -> NodeId {
    a as u32
}

/// The disk epoch of an actor.
pub fn actor_epoch(a: Actor) -> u32 {
    (a >> 32) as u32
}

/// An actor as people read it: `node.epoch` (epoch in hex).
pub fn actor_name(a: Actor) -> String {
    format!("{}.{:08x}", actor_node(a), actor_epoch(a))
}

/// One event: the `counter`-th write coordinated by `actor`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Dot {
    /// The actor that minted this dot. Records of layout 1 named it `node` (a node
    /// id, which reads as that node's actor of epoch 0).
    #[serde(alias = "node")]
    pub actor: Actor,
    /// Its counter, starting at 1.
    pub counter: u64,
}

/// A version vector: for each actor, the highest counter seen.
///
/// An actor's counter is per node, not per key (see the module docs): an
/// entry `a: c` says every dot of `a` *for this key* up to `c` is seen, and there
/// may be none below `c`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct VersionVector(pub BTreeMap<Actor, u64>);

impl VersionVector {
    /// The empty vector: has seen nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counter for `actor` (0 when never seen).
    pub fn get(&self, actor: Actor) -> u64 {
        self.0.get(&actor).copied().unwrap_or(0)
    }

    /// True when this vector has seen `dot`.
    pub fn covers(&self, dot: Dot) -> bool {
        self.get(dot.actor) >= dot.counter
    }

    /// Pointwise maximum, in place.
    pub fn join(&mut self, other: &VersionVector) {
        for (&n, &c) in &other.0 {
            let e = self.0.entry(n).or_insert(0);
            *e = (*e).max(c);
        }
    }

    /// Record `dot` as seen.
    pub fn add(&mut self, dot: Dot) {
        let e = self.0.entry(dot.actor).or_insert(0);
        *e = (*e).max(dot.counter);
    }
}

/// What a writer has seen of a key: a version vector and dots outside it
/// (see the module docs). Dots are kept sorted and never covered by the vector.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Seen {
    /// Every dot up to each counter.
    pub vv: VersionVector,
    /// Single dots besides.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dots: Vec<Dot>,
}

impl Seen {
    /// Nothing seen: a blind write.
    pub fn new() -> Self {
        Self::default()
    }

    /// Seen exactly what `vv` covers.
    pub fn of(vv: VersionVector) -> Self {
        Seen { vv, dots: vec![] }
    }

    /// True when nothing was seen.
    pub fn is_empty(&self) -> bool {
        self.vv.0.is_empty() && self.dots.is_empty()
    }

    /// True when `dot` was seen.
    pub fn covers(&self, dot: Dot) -> bool {
        self.vv.covers(dot) || self.dots.binary_search(&dot).is_ok()
    }

    /// Record one more dot, kept apart from the vector.
    pub fn add_dot(&mut self, dot: Dot) {
        if !self.vv.covers(dot)
            && let Err(i) = self.dots.binary_search(&dot)
        {
            self.dots.insert(i, dot);
        }
    }

    /// Sorted, deduplicated, and no dot the vector covers.
    pub fn is_normal(&self) -> bool {
        self.dots.windows(2).all(|w| w[0] < w[1]) && self.dots.iter().all(|d| !self.vv.covers(*d) && d.counter > 0)
    }

    /// Bring to normal form (after joining the vector with another).
    pub fn normalize(&mut self) {
        self.dots.sort_unstable();
        self.dots.dedup();
        let vv = &self.vv;
        self.dots.retain(|d| !vv.covers(*d));
    }

    /// True when everything `other` saw was seen here too (a state with this causal
    /// history is at least as new as one with `other`'s).
    pub fn covers_all(&self, other: &Seen) -> bool {
        let vv_in = other.vv.0.iter().all(|(&actor, &n)| {
            let have = self.vv.get(actor);
            // Counters past this vector are covered only by single dots, one each: at
            // most `dots.len()` of them, so the walk is bounded by this set's size.
            have >= n
                || (n - have <= self.dots.len() as u64
                    && (have + 1..=n).all(|counter| self.dots.binary_search(&Dot { actor, counter }).is_ok()))
        });
        vv_in && other.dots.iter().all(|d| self.covers(*d))
    }

    /// Everything either saw, in normal form.
    pub fn joined(mut self, other: &Seen) -> Seen {
        self.vv.join(&other.vv);
        self.dots.extend_from_slice(&other.dots);
        self.normalize();
        self
    }

    /// Actors named, in the vector and the dots.
    pub fn actors(&self) -> usize {
        self.vv.0.len() + self.dots.len()
    }

    /// The highest counter of `actor` seen, in the vector or the dots.
    pub fn max_counter(&self, actor: Actor) -> u64 {
        let dots = self.dots.iter().filter(|d| d.actor == actor).map(|d| d.counter);
        dots.fold(self.vv.get(actor), u64::max)
    }
}

/// A sibling: a value, or a tombstone (`None`) left by a delete.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Sibling {
    /// The write that made this sibling.
    pub dot: Dot,
    /// The value; `None` is a tombstone.
    #[serde(with = "serde_bytes")]
    pub value: Option<Vec<u8>>,
    /// The client's id of the write ([`crate::PutRequest::write_id`]): two siblings
    /// of one id and one value are one write taken twice (a retry), and only the
    /// smallest dot is kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_id: Option<u64>,
}

/// The state of one key on one replica. See the module docs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DvvSet {
    clock: VersionVector,
    /// Dots seen outside the clock (overwritten by a writer who saw them, not received yet).
    /// Always serialised: in the compact form fields go by position (see `frame`).
    #[serde(default)]
    cloud: Vec<Dot>,
    siblings: Vec<Sibling>,
}

impl DvvSet {
    /// The empty set: no value, no history.
    pub fn new() -> Self {
        Self::default()
    }

    /// The clock: every dot up to each counter has been seen.
    pub fn clock(&self) -> &VersionVector {
        &self.clock
    }

    /// Dots seen besides the clock.
    pub fn cloud(&self) -> &[Dot] {
        &self.cloud
    }

    /// Everything this state has seen: what a reader of it saw, to pass back with a write.
    pub fn seen(&self) -> Seen {
        Seen { vv: self.clock.clone(), dots: self.cloud.clone() }
    }

    /// The highest counter of `actor` this state has seen, in its clock or its cloud.
    pub fn max_counter(&self, actor: Actor) -> u64 {
        let cloud = self.cloud.iter().filter(|d| d.actor == actor).map(|d| d.counter);
        cloud.fold(self.clock.get(actor), u64::max)
    }

    /// True when this state has seen `dot`.
    pub fn covers_dot(&self, dot: Dot) -> bool {
        self.clock.covers(dot) || self.cloud.binary_search(&dot).is_ok()
    }

    /// The live siblings, tombstones included, sorted by dot.
    pub fn siblings(&self) -> &[Sibling] {
        &self.siblings
    }

    /// The sibling values that are not tombstones.
    pub fn values(&self) -> impl Iterator<Item = &[u8]> {
        self.siblings.iter().filter_map(|s| s.value.as_deref())
    }

    /// True when there is no live value (empty, or tombstones only): a read says "not found".
    pub fn is_deleted(&self) -> bool {
        self.siblings.iter().all(|s| s.value.is_none())
    }

    /// Total bytes of sibling values (for limits and metrics).
    pub fn value_bytes(&self) -> usize {
        self.siblings.iter().map(|s| s.value.as_ref().map_or(0, Vec::len)).sum()
    }

    /// About the bytes this state takes encoded: values, plus 24 per sibling and 16 per
    /// clock entry or cloud dot.
    pub fn size_bytes(&self) -> usize {
        self.value_bytes() + 24 * self.siblings.len() + 16 * (self.clock.0.len() + self.cloud.len())
    }

    /// A write by `actor` after `context`, a plain version vector (tests and tools;
    /// the coordinator uses [`DvvSet::apply`] with a counter of its own).
    pub fn update(&mut self, context: &VersionVector, value: Option<Vec<u8>>, actor: Actor) -> Dot {
        let dot = Dot { actor, counter: self.clock.get(actor) + 1 };
        self.apply(&Seen::of(context.clone()), value, dot, None);
        dot
    }

    /// The coordinator's write of `value` (`None`: a delete) under the new `dot`, by a
    /// writer who saw `seen`.
    ///
    /// Siblings `seen` covers are replaced; the rest stay as siblings of the new value,
    /// so a write that saw nothing never removes anything. Dots `seen` names that this
    /// state has not received yet go in the cloud, so they are dropped when they arrive.
    /// The caller mints `dot` above every counter its actor ever used (the node-wide
    /// counter): never from `seen`, which a client sent.
    pub fn apply(&mut self, seen: &Seen, value: Option<Vec<u8>>, dot: Dot, write_id: Option<u64>) {
        debug_assert!(!self.covers_dot(dot), "a new dot is above everything seen");
        self.siblings.retain(|s| !seen.covers(s.dot));
        self.clock.join(&seen.vv);
        self.cloud.extend(seen.dots.iter().copied());
        self.clock.add(dot);
        self.normalize_cloud();
        self.siblings.push(Sibling { dot, value, write_id });
        self.siblings.sort_by_key(|s| s.dot);
        self.dedup_writes();
    }

    /// This state without the siblings `drop` picks; the clock still covers them, so
    /// they stay gone wherever this state is merged.
    pub fn without(&self, drop: impl Fn(&Sibling) -> bool) -> DvvSet {
        let mut s = self.clone();
        s.siblings.retain(|x| !drop(x));
        s
    }

    /// The dot of the live sibling written under `write_id` with `value`, if any.
    pub fn find_write(&self, write_id: u64, value: Option<&[u8]>) -> Option<Dot> {
        self.siblings.iter().find(|s| s.write_id == Some(write_id) && s.value.as_deref() == value).map(|s| s.dot)
    }

    /// One write taken twice (a retry that reached two coordinators) is one sibling:
    /// of siblings with the same write id *and* value, keep the one with the smallest
    /// dot (by actor, then counter). The other dots stay in the clock, so every replica
    /// drops them too, whatever order states arrive in. (A write id is the client's;
    /// two writes that share one but not their value stay two siblings.)
    fn dedup_writes(&mut self) {
        if self.siblings.iter().filter(|s| s.write_id.is_some()).count() < 2 {
            return;
        }
        let mut kept: Vec<(u64, &Option<Vec<u8>>)> = vec![];
        let mut drop = vec![false; self.siblings.len()];
        for (i, s) in self.siblings.iter().enumerate() {
            let Some(id) = s.write_id else { continue };
            if kept.iter().any(|(k, v)| *k == id && *v == &s.value) {
                drop[i] = true;
            } else {
                kept.push((id, &s.value));
            }
        }
        let mut i = 0;
        self.siblings.retain(|_| {
            i += 1;
            !drop[i - 1]
        });
    }

    fn normalize_cloud(&mut self) {
        self.cloud.sort_unstable();
        self.cloud.dedup();
        let clock = &self.clock;
        self.cloud.retain(|d| !clock.covers(*d));
    }

    /// Merge another replica's state of the same key into this one.
    ///
    /// A sibling survives when the other side still has it, or has not seen it.
    pub fn sync(&mut self, other: &DvvSet) {
        let mine = std::mem::take(&mut self.siblings);
        let mut out: Vec<Sibling> = Vec::with_capacity(mine.len() + other.siblings.len());
        for s in mine {
            if !other.covers_dot(s.dot) || other.has_dot(s.dot) {
                out.push(s);
            }
        }
        for s in &other.siblings {
            if !self.covers_dot(s.dot) && !out.iter().any(|o| o.dot == s.dot) {
                out.push(s.clone());
            }
        }
        out.sort_by_key(|s| s.dot);
        self.siblings = out;
        self.clock.join(&other.clock);
        self.cloud.extend(other.cloud.iter().copied());
        self.normalize_cloud();
        self.dedup_writes();
    }

    /// The merge of two states, by value.
    pub fn merged(mut self, other: &DvvSet) -> DvvSet {
        self.sync(other);
        self
    }

    /// True when this state already contains everything in `other` (syncing it changes nothing).
    pub fn covers(&self, other: &DvvSet) -> bool {
        self.clone().merged(other) == *self
    }

    fn has_dot(&self, dot: Dot) -> bool {
        self.siblings.binary_search_by_key(&dot, |s| s.dot).is_ok()
    }

    /// Last-writer-wins by dot order: keep only the newest sibling. What a store
    /// without siblings would keep; it silently drops concurrent writes, so it is
    /// never applied by default (the simulator uses it as a known-broken merge).
    pub fn newest_only(&self) -> DvvSet {
        let mut s = self.clone();
        if let Some(last) = s.siblings.iter().max_by_key(|x| (x.dot.counter, x.dot.actor)).cloned() {
            s.siblings = vec![last];
        }
        s
    }

    /// Checks the invariants. Decoded states from the network or disk must pass
    /// this before they are merged, and a state must pass it before it is encoded.
    pub fn is_valid(&self) -> bool {
        self.siblings.windows(2).all(|w| w[0].dot < w[1].dot)
            && self.siblings.iter().all(|s| self.clock.covers(s.dot) && s.dot.counter > 0)
            && self.cloud.windows(2).all(|w| w[0] < w[1])
            && self.cloud.iter().all(|d| !self.clock.covers(*d) && d.counter > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vals(s: &DvvSet) -> Vec<&[u8]> {
        s.values().collect()
    }

    #[test]
    fn writes_with_no_context_become_siblings() {
        let mut s = DvvSet::new();
        s.update(&VersionVector::new(), Some(b"a".to_vec()), 1);
        s.update(&VersionVector::new(), Some(b"b".to_vec()), 1);
        assert_eq!(vals(&s), vec![b"a".as_slice(), b"b"]);
    }

    #[test]
    fn writes_with_the_same_context_become_siblings() {
        let mut s = DvvSet::new();
        s.update(&VersionVector::new(), Some(b"v0".to_vec()), 1);
        let ctx = s.clock().clone();
        s.update(&ctx, Some(b"a".to_vec()), 1);
        s.update(&ctx, Some(b"b".to_vec()), 2);
        assert_eq!(vals(&s), vec![b"a".as_slice(), b"b"]);
    }

    #[test]
    fn write_with_context_of_all_siblings_replaces_them() {
        let mut s = DvvSet::new();
        s.update(&VersionVector::new(), Some(b"a".to_vec()), 1);
        s.update(&VersionVector::new(), Some(b"b".to_vec()), 2);
        let ctx = s.clock().clone();
        s.update(&ctx, Some(b"c".to_vec()), 3);
        assert_eq!(vals(&s), vec![b"c".as_slice()]);
    }

    #[test]
    fn write_with_older_context_keeps_newer_sibling() {
        let mut s = DvvSet::new();
        s.update(&VersionVector::new(), Some(b"v1".to_vec()), 1);
        let old = s.clock().clone();
        s.update(&old, Some(b"v2".to_vec()), 1);
        s.update(&old, Some(b"v3".to_vec()), 2);
        assert_eq!(vals(&s), vec![b"v2".as_slice(), b"v3"]);
    }

    #[test]
    fn concurrent_writes_on_two_replicas_survive_sync() {
        let mut a = DvvSet::new();
        a.update(&VersionVector::new(), Some(b"x".to_vec()), 1);
        let mut b = a.clone();
        let ctx = a.clock().clone();
        a.update(&ctx, Some(b"from-a".to_vec()), 1);
        b.update(&ctx, Some(b"from-b".to_vec()), 2);
        let m = a.clone().merged(&b);
        assert_eq!(vals(&m), vec![b"from-a".as_slice(), b"from-b"]);
        assert!(m.covers(&a) && m.covers(&b) && !a.covers(&b));
    }

    #[test]
    fn delete_is_a_tombstone_sibling() {
        let mut s = DvvSet::new();
        s.update(&VersionVector::new(), Some(b"a".to_vec()), 1);
        assert!(!s.is_deleted());
        let ctx = s.clock().clone();
        s.update(&ctx, None, 1);
        assert!(s.is_deleted());
        assert_eq!(s.siblings().len(), 1);
        assert!(DvvSet::new().is_deleted());
    }

    #[test]
    fn sync_drops_a_sibling_the_other_side_overwrote() {
        let mut a = DvvSet::new();
        a.update(&VersionVector::new(), Some(b"old".to_vec()), 1);
        let mut b = a.clone();
        let ctx = b.clock().clone();
        b.update(&ctx, Some(b"new".to_vec()), 2);
        a.sync(&b);
        assert_eq!(vals(&a), vec![b"new".as_slice()]);
    }

    #[test]
    fn invalid_states_are_detected() {
        let mut s = DvvSet::new();
        s.update(&VersionVector::new(), Some(b"a".to_vec()), 1);
        let mut bad = s.clone();
        bad.clock = VersionVector::new();
        assert!(s.is_valid());
        assert!(!bad.is_valid());
    }
}

#[cfg(test)]
mod laws {
    use super::*;
    use proptest::prelude::*;

    /// Histories: a few replicas, each op either a local write (with the context
    /// of some replica's current state, or none) or a sync from another replica.
    #[test]
    fn covers_all_reads_counters_past_the_vector_from_the_dots() {
        let d = |actor, counter| Dot { actor, counter };
        let mut a = Seen::new();
        a.vv.add(d(1, 2));
        a.add_dot(d(1, 3));
        a.add_dot(d(1, 4));
        a.add_dot(d(2, 7));
        let mut b = Seen::new();
        b.vv.add(d(1, 4));
        assert!(a.covers_all(&b), "1:1..2 by the vector, 1:3 and 1:4 by dots");
        b.vv.add(d(1, 5));
        assert!(!a.covers_all(&b));
        let mut c = Seen::new();
        c.add_dot(d(2, 7));
        assert!(a.covers_all(&c) && !c.covers_all(&a));
        assert!(a.covers_all(&Seen::new()) && Seen::new().covers_all(&Seen::new()));
        let j = c.clone().joined(&b);
        assert!(j.is_normal() && j.covers_all(&b) && j.covers_all(&c));
    }

    fn states() -> impl Strategy<Value = Vec<DvvSet>> {
        let op = (0usize..3, 0usize..3, 0u8..4, any::<u8>());
        proptest::collection::vec(op, 0..24).prop_map(|ops| {
            let mut reps = vec![DvvSet::new(); 3];
            for (i, j, kind, v) in ops {
                match kind {
                    0 => {
                        let ctx = reps[j].clock().clone();
                        reps[i].update(&ctx, Some(vec![v]), i as Actor + 1);
                    }
                    1 => {
                        // A write that saw one other replica's state and one dot it has not received
                        // (a put reply's context), its counter above a node-wide floor.
                        let mut seen = Seen::of(reps[j].clock().clone());
                        if let Some(s) = reps[(j + 1) % 3].siblings().first() {
                            seen.add_dot(s.dot);
                        }
                        let actor = i as Actor + 1;
                        let dot = Dot { actor, counter: reps[i].clock().get(actor).max(u64::from(v)) + 1 };
                        reps[i].apply(&seen, Some(vec![v]), dot, None);
                    }
                    2 => {
                        let ctx = reps[i].clock().clone();
                        reps[i].update(&ctx, None, i as Actor + 1);
                    }
                    _ => {
                        let other = reps[j].clone();
                        reps[i].sync(&other);
                    }
                }
            }
            reps
        })
    }

    proptest! {
        #[test]
        fn sync_is_commutative(r in states()) {
            prop_assert_eq!(r[0].clone().merged(&r[1]), r[1].clone().merged(&r[0]));
        }

        #[test]
        fn sync_is_associative(r in states()) {
            let left = r[0].clone().merged(&r[1]).merged(&r[2]);
            let right = r[0].clone().merged(&r[1].clone().merged(&r[2]));
            prop_assert_eq!(left, right);
        }

        #[test]
        fn sync_is_idempotent(r in states()) {
            prop_assert_eq!(r[0].clone().merged(&r[0]), r[0].clone());
            let m = r[0].clone().merged(&r[1]);
            prop_assert_eq!(m.clone().merged(&r[1]), m);
        }

        /// Two coordinators taking one write (a retry after failover) mint two dots of
        /// one write id. Merging is then not associative (which copy a later overwrite
        /// saw matters), but it still converges, and no state keeps two copies.
        #[test]
        fn retried_writes_converge_to_one_copy(
            ops in proptest::collection::vec((0usize..3, 0usize..3, 0u8..3, 0u64..3), 0..24)
        ) {
            let mut reps = vec![DvvSet::new(); 3];
            for (i, j, kind, id) in ops {
                let actor = i as Actor + 1;
                match kind {
                    0 => {
                        // A write (or its retry), blind or with another replica's context.
                        let seen = if id == 0 { Seen::new() } else { reps[j].seen() };
                        if reps[i].find_write(id, Some(&[id as u8])).is_none() {
                            let dot = Dot { actor, counter: reps[i].clock().get(actor) + 1 };
                            reps[i].apply(&seen, Some(vec![id as u8]), dot, Some(id));
                        }
                    }
                    1 => {
                        let seen = reps[j].seen();
                        let dot = Dot { actor, counter: reps[i].clock().get(actor) + 1 };
                        reps[i].apply(&seen, Some(vec![9]), dot, None);
                    }
                    _ => {
                        let other = reps[j].clone();
                        reps[i].sync(&other);
                    }
                }
                for r in &reps {
                    let ids: Vec<u64> = r.siblings().iter().filter_map(|s| s.write_id).collect();
                    let unique: std::collections::BTreeSet<_> = ids.iter().collect();
                    prop_assert_eq!(ids.len(), unique.len(), "two copies of one write in {:?}", r);
                    prop_assert!(r.is_valid());
                }
            }
            // Anti-entropy: sync every pair until nothing changes.
            for _ in 0..6 {
                for i in 0..3 {
                    for j in 0..3 {
                        let other = reps[j].clone();
                        reps[i].sync(&other);
                    }
                }
            }
            prop_assert_eq!(&reps[0], &reps[1]);
            prop_assert_eq!(&reps[1], &reps[2]);
        }

        #[test]
        fn states_stay_valid_and_merge_covers_inputs(r in states()) {
            for s in &r { prop_assert!(s.is_valid()); }
            let m = r[0].clone().merged(&r[1]);
            prop_assert!(m.is_valid());
            prop_assert!(m.covers(&r[0]) && m.covers(&r[1]));
        }
    }
}
