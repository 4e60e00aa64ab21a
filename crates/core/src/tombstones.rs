//! Tombstone bookkeeping for GC, sans-IO: which tombstones wait, per range and in
//! age order, and what purged tombstones had seen.
//!
//! **The index.** Tombstone GC asks, per range, "which tombstones are older than the
//! last exchange every other home replica completed, and past the grace delay?".
//! Kept per range in age order, the answer is a prefix of each range's list, so one
//! range blocked (a replica down, exchanges failing) costs one lookup and never hides
//! the purgeable tombstones of another. The index holds at most `max` keys; past that
//! a tombstone is left out and the index is marked incomplete, and the node rescans
//! its store for tombstones, a page per GC round, once the index has room again.
//!
//! **Purge records.** A purged tombstone's key and everything it had seen (clock and
//! dots) are kept, durably, for two more grace periods, so an older state that arrives
//! late (a hint, a replica that missed the delete) has the values the delete removed
//! stripped, whether or not the key has been written since. At most `max` records:
//! when full, GC purges nothing more until records expire (tombstones are kept
//! longer; nothing deleted comes back). Records expire on the monotonic clock; those
//! read back at start are kept one full grace period from then, whatever the wall
//! clock did meanwhile (the same two graces).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use qkv_proto::{DvvSet, Seen};

use crate::merkle::RangeId;

/// Tombstones waiting for GC, by range and age.
#[derive(Debug)]
pub struct TombstoneIndex {
    max: usize,
    by_key: HashMap<Vec<u8>, (RangeId, u64)>,
    by_range: BTreeMap<RangeId, BTreeSet<(u64, Vec<u8>)>>,
    /// A tombstone was left out (the index was full): rescan the store for them.
    incomplete: bool,
    /// Where the next GC round starts, so every range gets its turn.
    cursor: RangeId,
}

impl TombstoneIndex {
    /// An empty index of at most `max` tombstones.
    pub fn new(max: usize) -> Self {
        TombstoneIndex { max, by_key: HashMap::new(), by_range: BTreeMap::new(), incomplete: false, cursor: 0 }
    }

    /// Tombstones indexed.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// True when none is indexed.
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// True when some tombstone was left out for want of room.
    pub fn incomplete(&self) -> bool {
        self.incomplete
    }

    /// True when a rescan should run: something was left out, and there is room again.
    pub fn wants_rescan(&self) -> bool {
        self.incomplete && self.by_key.len() < self.max / 2
    }

    /// A rescan starts: what it finds is what was left out.
    pub fn rescan_started(&mut self) {
        self.incomplete = false;
    }

    /// `key` (in `range`) holds a tombstone since `since` (a rewrite keeps the older time
    /// only if the tombstone did not change; callers pass the time of the change).
    pub fn insert(&mut self, range: RangeId, key: &[u8], since: u64) {
        self.remove(key);
        if self.by_key.len() >= self.max {
            self.incomplete = true;
            return;
        }
        self.by_key.insert(key.to_vec(), (range, since));
        self.by_range.entry(range).or_default().insert((since, key.to_vec()));
    }

    /// Like [`TombstoneIndex::insert`], but keep the time already indexed (a rescan
    /// finding a tombstone the index holds).
    pub fn insert_if_absent(&mut self, range: RangeId, key: &[u8], since: u64) {
        if !self.by_key.contains_key(key) {
            self.insert(range, key, since);
        }
    }

    /// `key` holds no tombstone now (a value, or purged).
    pub fn remove(&mut self, key: &[u8]) {
        if let Some((range, since)) = self.by_key.remove(key)
            && let Some(set) = self.by_range.get_mut(&range)
        {
            set.remove(&(since, key.to_vec()));
            if set.is_empty() {
                self.by_range.remove(&range);
            }
        }
    }

    /// Up to `limit` tombstones that may be purged: in each range, those indexed
    /// before `confirmed(range)` (the start of the oldest last exchange with the
    /// range's other home replicas; `None`: not confirmed) and at or before `due`.
    /// Ranges are visited round robin from where the last call stopped.
    pub fn purgeable(&mut self, due: u64, limit: usize, confirmed: impl Fn(RangeId) -> Option<u64>) -> Vec<Vec<u8>> {
        let ranges: Vec<RangeId> =
            self.by_range.range(self.cursor..).chain(self.by_range.range(..self.cursor)).map(|(r, _)| *r).collect();
        let mut out = vec![];
        for range in ranges {
            if out.len() >= limit {
                self.cursor = range;
                return out;
            }
            let Some(from) = confirmed(range) else { continue };
            let cutoff = from.min(due.saturating_add(1));
            for (since, key) in &self.by_range[&range] {
                if *since >= cutoff || out.len() >= limit {
                    break;
                }
                out.push(key.clone());
            }
        }
        self.cursor = 0;
        out
    }
}

/// What purged tombstones had seen, for a grace period after the purge.
#[derive(Debug)]
pub struct PurgeRecords {
    max: usize,
    bytes_max: usize,
    /// Approximate memory of the records ([`record_bytes`]).
    bytes: usize,
    by_key: HashMap<Vec<u8>, (Seen, u64)>,
    /// (expiry, key), oldest first; an entry whose expiry no longer matches is stale.
    order: VecDeque<(u64, Vec<u8>)>,
}

impl PurgeRecords {
    /// No records; at most `max` of them, in at most `bytes_max` bytes.
    pub fn new(max: usize, bytes_max: usize) -> Self {
        PurgeRecords { max, bytes_max, bytes: 0, by_key: HashMap::new(), order: VecDeque::new() }
    }

    /// Records held.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// True when none is held.
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// True when no record can be added: GC must wait.
    pub fn is_full(&self) -> bool {
        self.by_key.len() >= self.max || self.bytes >= self.bytes_max
    }

    /// Remember `key`'s purged tombstone, which had seen `seen`, until `expires`.
    /// False (nothing recorded) when full.
    pub fn insert(&mut self, key: &[u8], seen: Seen, expires: u64) -> bool {
        if self.is_full() && !self.by_key.contains_key(key) {
            return false;
        }
        self.insert_always(key, seen, expires);
        true
    }

    /// [`PurgeRecords::insert`], even when full (records read back at start).
    pub fn insert_always(&mut self, key: &[u8], seen: Seen, expires: u64) {
        let seen = match self.take(key) {
            // Purged again: what both tombstones had seen.
            Some(mut old) => {
                old.vv.join(&seen.vv);
                old.dots.extend(seen.dots);
                old.normalize();
                old
            }
            None => seen,
        };
        self.bytes += record_bytes(key, &seen);
        self.by_key.insert(key.to_vec(), (seen, expires));
        self.order.push_back((expires, key.to_vec()));
        // Entries of records since replaced or removed linger until their expiry:
        // past twice the records, rebuild the queue from them.
        if self.order.len() > 2 * self.by_key.len() + 1024 {
            let mut live: Vec<(u64, Vec<u8>)> = self.by_key.iter().map(|(k, (_, e))| (*e, k.clone())).collect();
            live.sort();
            self.order = live.into();
        }
    }

    fn take(&mut self, key: &[u8]) -> Option<Seen> {
        let (seen, _) = self.by_key.remove(key)?;
        self.bytes -= record_bytes(key, &seen);
        Some(seen)
    }

    /// The record of `key`, if any.
    pub fn get(&self, key: &[u8]) -> Option<&Seen> {
        self.by_key.get(key).map(|(s, _)| s)
    }

    /// Drop the records expired by `now`; returns their keys (to delete from the store).
    pub fn expire(&mut self, now: u64) -> Vec<Vec<u8>> {
        let mut gone = vec![];
        while let Some((at, _)) = self.order.front() {
            if *at > now {
                break;
            }
            let Some((at, key)) = self.order.pop_front() else { break };
            if self.by_key.get(&key).is_some_and(|(_, e)| *e == at) {
                self.take(&key);
                gone.push(key);
            }
        }
        gone
    }

    /// `incoming` without the siblings a purged tombstone of `key` had seen: values
    /// deleted before the purge, which must not come back. A sibling `local` (this
    /// node's state) still holds is never stripped: the record cannot speak for it.
    /// `None` when nothing is stripped.
    pub fn strip(&self, key: &[u8], incoming: &DvvSet, local: Option<&DvvSet>) -> Option<DvvSet> {
        let seen = self.get(key)?;
        let held = |s: &qkv_proto::Sibling| local.is_some_and(|l| l.siblings().iter().any(|x| x.dot == s.dot));
        let gone = |s: &qkv_proto::Sibling| seen.covers(s.dot) && !held(s);
        if !incoming.siblings().iter().any(gone) {
            return None;
        }
        Some(incoming.without(gone))
    }

    /// Forget `key`'s record (its purge did not happen after all).
    pub fn remove(&mut self, key: &[u8]) {
        self.take(key);
    }
}

/// What one record takes in memory, roughly: its key twice (map and expiry queue),
/// its clock and dots, and the maps' overhead.
fn record_bytes(key: &[u8], seen: &Seen) -> usize {
    2 * key.len() + 16 * (seen.vv.0.len() + seen.dots.len()) + 96
}

#[cfg(test)]
mod tests {
    use super::*;
    use qkv_proto::{Dot, VersionVector};

    #[test]
    fn a_blocked_range_hides_nothing_of_another() {
        let mut ix = TombstoneIndex::new(100);
        for i in 0..50u64 {
            ix.insert(1, format!("blocked{i}").as_bytes(), i);
        }
        ix.insert(2, b"free", 10);
        ix.insert(2, b"young", 90);
        // Range 1 is never confirmed; range 2 was confirmed from time 50.
        let confirmed = |r: RangeId| (r == 2).then_some(50);
        assert_eq!(ix.purgeable(100, 10, confirmed), vec![b"free".to_vec()]);
        // The grace delay: nothing indexed after `due`.
        assert!(ix.purgeable(5, 10, confirmed).is_empty());
        // Round robin: a small limit still reaches every range over calls.
        let all = |_| Some(1000);
        let mut seen = BTreeSet::new();
        for _ in 0..20 {
            seen.extend(ix.purgeable(1000, 3, all));
        }
        assert!(seen.contains(b"free".as_slice()) && seen.contains(b"blocked0".as_slice()));
    }

    #[test]
    fn the_index_is_bounded_and_asks_for_a_rescan() {
        let mut ix = TombstoneIndex::new(4);
        for i in 0..6u64 {
            ix.insert(0, &[i as u8], i);
        }
        assert_eq!(ix.len(), 4);
        assert!(ix.incomplete() && !ix.wants_rescan());
        for i in 0..3u8 {
            ix.remove(&[i]);
        }
        assert!(ix.wants_rescan());
        ix.rescan_started();
        ix.insert_if_absent(0, &[4], 99);
        assert_eq!(ix.len(), 2);
        // A rewrite moves a key, never duplicates it.
        ix.insert(0, &[3], 50);
        ix.insert(0, &[3], 60);
        assert_eq!(ix.len(), 2);
    }

    fn set(writes: &[(u64, u64, Option<&str>)]) -> DvvSet {
        let mut s = DvvSet::new();
        for &(actor, counter, v) in writes {
            s.sync(&{
                let mut one = DvvSet::new();
                one.apply(&Seen::new(), v.map(|v| v.as_bytes().to_vec()), Dot { actor, counter }, None);
                one
            });
        }
        s
    }

    #[test]
    fn purge_records_strip_deleted_values_even_from_a_key_written_since() {
        let mut p = PurgeRecords::new(2, usize::MAX);
        let deleted = Seen::of(VersionVector([(1, 5)].into_iter().collect()));
        assert!(p.insert(b"k", deleted, 100));
        // A late old state: a value of dot 1:3 (deleted) and one of dot 2:1 (written after).
        let late = set(&[(1, 3, Some("old")), (2, 1, Some("new"))]);
        let kept = p.strip(b"k", &late, None).unwrap();
        assert_eq!(kept.values().collect::<Vec<_>>(), vec![b"new".as_slice()]);
        assert!(kept.is_valid());
        assert!(p.strip(b"k", &set(&[(2, 1, Some("new"))]), None).is_none());
        assert!(p.strip(b"other", &late, None).is_none());
        // What this node still holds is not stripped (a record whose purge failed).
        assert!(p.strip(b"k", &late, Some(&set(&[(1, 3, Some("old"))]))).is_none());
        // Full: GC must wait; expiry frees room and names what to delete from the store.
        assert!(p.insert(b"j", Seen::new(), 200));
        assert!(p.is_full() && !p.insert(b"x", Seen::new(), 300));
        assert_eq!(p.expire(150), vec![b"k".to_vec()]);
        assert!(p.insert(b"x", Seen::new(), 300));
    }

    #[test]
    fn purge_records_are_bounded_by_their_bytes_too() {
        let mut p = PurgeRecords::new(100, 900);
        let key = |i: u8| vec![i; 200];
        assert!(p.insert(&key(1), Seen::new(), 10));
        assert!(p.insert(&key(2), Seen::new(), 20));
        assert!(p.is_full() && !p.insert(&key(3), Seen::new(), 30), "two 200-byte keys fill 900 bytes");
        p.remove(&key(1));
        assert!(!p.is_full() && p.insert(&key(3), Seen::new(), 30));
        assert_eq!(p.expire(25), vec![key(2)]);
        assert_eq!(p.len(), 1);
        assert!(!p.is_full());
    }
}
