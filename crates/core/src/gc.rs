//! Tombstone GC as its own sans-IO state machine: which tombstones are due, the
//! purge records that keep deleted values from coming back, and the rescan that
//! finds tombstones the bounded index left out.
//!
//! It owns [`TombstoneIndex`], [`PurgeRecords`] and the rescan cursor. Its inputs
//! are the store, the time, and two facts from anti-entropy: since when each
//! range is confirmed on every other home replica, and which range a token falls
//! in. [`TombstoneGc::round`] returns what it purged, so anti-entropy can update
//! its trees. The rules are in [`crate::tombstones`].

use qkv_proto::{DvvSet, Seen};

use crate::Store;
use crate::merkle::RangeId;
use crate::ring::token;
use crate::tombstones::{PurgeRecords, TombstoneIndex};

/// A purge record lives this many tombstone graces. One is what a late old state
/// needs; the second outlasts the peers' own purges of the same tombstone, which
/// could otherwise push it back here after the record expired (and back and forth,
/// with a short grace, so that the replicas never all let it go).
pub const PURGE_RECORD_GRACES: u64 = 2;
/// Tombstones indexed in memory, at most (past that, found again by a rescan).
pub const TOMBSTONE_INDEX_MAX: usize = 1 << 20;
/// Keys a rescan reads per round.
const SCAN_PAGE: usize = 4096;

/// The tombstone GC of one node.
#[derive(Debug)]
pub struct TombstoneGc {
    grace_ms: u64,
    batch: usize,
    /// Tombstone-only keys, by range and since when.
    index: TombstoneIndex,
    /// Where a rescan for tombstones left out of a full index stands.
    rescan: Option<(u64, Vec<u8>)>,
    /// What purged tombstones had seen, for [`PURGE_RECORD_GRACES`] graces.
    records: PurgeRecords,
    purged: u64,
}

impl TombstoneGc {
    /// GC purging at most `batch` tombstones a round, `grace_ms` after they are
    /// confirmed, with purge records in at most `records_bytes_max` bytes.
    pub fn new(grace_ms: u64, batch: usize, records_bytes_max: usize) -> Self {
        TombstoneGc {
            grace_ms,
            batch: batch.max(1),
            index: TombstoneIndex::new(TOMBSTONE_INDEX_MAX),
            rescan: None,
            records: PurgeRecords::new(usize::MAX, records_bytes_max.max(1)),
            purged: 0,
        }
    }

    /// Forget the tombstone index (its range ids belong to a ring being replaced);
    /// the purge records stay. The caller feeds every stored state back in.
    pub fn clear_index(&mut self) {
        self.index = TombstoneIndex::new(TOMBSTONE_INDEX_MAX);
        self.rescan = None;
    }

    /// A key's stored state changed: `tombstone_in` is the range it falls in if it
    /// is a tombstone now, `None` if it holds values (or nothing).
    pub fn on_write(&mut self, key: &[u8], tombstone_in: Option<RangeId>, now: u64) {
        match tombstone_in {
            Some(range) => self.index.insert(range, key, now),
            None if !self.index.is_empty() => self.index.remove(key),
            None => {}
        }
    }

    /// `incoming` without the values a tombstone this node purged for `key` had
    /// deleted (`None`: nothing to strip).
    pub fn strip(&self, key: &[u8], incoming: &DvvSet, local: Option<&DvvSet>) -> Option<DvvSet> {
        self.records.strip(key, incoming, local)
    }

    /// A purge record read back at start: kept as long from now as a new one, even
    /// past the bound (a lower bound than before, or another load order): dropping
    /// it could bring a deleted value back. Over the bound, GC only waits.
    pub fn load_record(&mut self, key: &[u8], seen: Seen, now: u64) {
        self.records.insert_always(key, seen, now + PURGE_RECORD_GRACES * self.grace_ms);
    }

    /// Tombstones waiting for GC.
    pub fn pending(&self) -> usize {
        self.index.len()
    }

    /// True while some tombstones are known only to the store (the index was full).
    pub fn index_incomplete(&self) -> bool {
        self.index.incomplete() || self.rescan.is_some()
    }

    /// Purge records held.
    pub fn records(&self) -> usize {
        self.records.len()
    }

    /// Tombstones purged since start.
    pub fn purged(&self) -> u64 {
        self.purged
    }

    /// One GC round: forget expired purge records, rescan a page if the index
    /// left tombstones out, then purge up to a batch of the due ones: those
    /// written a grace before their range was last confirmed on every other home
    /// replica (`confirmed`; a range that is not blocks only its own). Each purge
    /// is recorded, durably, before the tombstone goes; with the records full, GC
    /// waits. `record = false` is the naive timer GC (a deliberate bug). Returns
    /// the purged keys and their last states.
    pub fn round<S: Store>(
        &mut self,
        store: &mut S,
        now: u64,
        confirmed: impl Fn(RangeId) -> Option<u64>,
        range_of: impl Fn(u64) -> RangeId,
        record: bool,
    ) -> Vec<(Vec<u8>, DvvSet)> {
        for key in self.records.expire(now) {
            if let Err(e) = store.delete_purged(&key) {
                tracing::warn!("forgetting a purge record: {e}");
            }
        }
        self.rescan_page(store, now, range_of);
        let due = self.index.purgeable(now.saturating_sub(self.grace_ms), self.batch, confirmed);
        let mut purged = vec![];
        for key in due {
            if record && self.records.is_full() {
                break;
            }
            match store.get(&key) {
                Ok(Some(set)) if set.is_deleted() => {
                    if record {
                        if let Err(e) = store.put_purged(&key, &set.seen()) {
                            tracing::warn!("recording a purge: {e}");
                            continue;
                        }
                        self.records.insert(&key, set.seen(), now + PURGE_RECORD_GRACES * self.grace_ms);
                    }
                    if let Err(e) = store.delete(&key) {
                        tracing::warn!("purging a tombstone: {e}");
                        // Not purged: a record of it would strip the tombstone from its own copies.
                        if record {
                            self.records.remove(&key);
                            if let Err(e) = store.delete_purged(&key) {
                                tracing::warn!("dropping the record of a failed purge: {e}");
                            }
                        }
                        continue;
                    }
                    self.index.remove(&key);
                    self.purged += 1;
                    purged.push((key, set));
                }
                Ok(_) => self.index.remove(&key),
                Err(e) => tracing::warn!("reading a tombstone: {e}"),
            }
        }
        purged
    }

    /// The index left tombstones out when it was full: once it has room, look for
    /// them in the store again, one page per round.
    fn rescan_page<S: Store>(&mut self, store: &S, now: u64, range_of: impl Fn(u64) -> RangeId) {
        if self.rescan.is_none() && self.index.wants_rescan() {
            self.index.rescan_started();
            self.rescan = Some((0, vec![]));
        }
        let Some((tok, key)) = self.rescan.take() else { return };
        let page = match store.scan((tok, &key), u64::MAX, SCAN_PAGE) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!("rescanning for tombstones: {e}");
                self.rescan = Some((tok, key));
                return;
            }
        };
        let full = page.len() == SCAN_PAGE;
        let mut next = None;
        for (k, set) in page {
            let t = token(&k);
            if set.is_deleted() {
                self.index.insert_if_absent(range_of(t), &k, now);
            }
            next = Some((t, k));
        }
        // Resume just after the last key seen.
        self.rescan = match next {
            Some((t, mut k)) if full => {
                k.push(0);
                Some((t, k))
            }
            _ => None,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::MemStore;
    use qkv_proto::VersionVector;

    /// A value written by actor 1 (dot 1:1).
    fn value() -> DvvSet {
        let mut s = DvvSet::new();
        s.update(&VersionVector::new(), Some(b"v".to_vec()), 1);
        s
    }

    /// The delete of that value (dot 1:2).
    fn tombstone() -> DvvSet {
        let mut s = value();
        let seen = s.clock().clone();
        s.update(&seen, None, 1);
        s
    }

    #[test]
    fn a_confirmed_tombstone_is_purged_after_the_grace_with_a_record_and_an_unconfirmed_range_waits() {
        let mut store = MemStore::default();
        let mut gc = TombstoneGc::new(100, 10, 1 << 20);
        for (key, range) in [(b"a".to_vec(), 0), (b"b".to_vec(), 1)] {
            store.put(&key, &tombstone()).unwrap();
            gc.on_write(&key, Some(range), 100);
        }
        // Range 0 confirmed since 500, range 1 never.
        let confirmed = |r: RangeId| (r == 0).then_some(500);
        assert!(gc.round(&mut store, 150, confirmed, |_| 0, true).is_empty(), "within the grace");
        let purged = gc.round(&mut store, 250, confirmed, |_| 0, true);
        assert_eq!(purged.iter().map(|p| p.0.as_slice()).collect::<Vec<_>>(), vec![b"a".as_slice()]);
        assert_eq!(store.value(b"a"), None);
        assert!(store.purged.contains_key(b"a".as_slice()), "recorded durably");
        assert!(store.value(b"b").is_some(), "its range is not confirmed");
        assert_eq!((gc.pending(), gc.records(), gc.purged()), (1, 1, 1));
        // A late copy of the value the tombstone deleted is stripped.
        assert!(gc.strip(b"a", &value(), None).is_some_and(|s| s.siblings().is_empty()));
        // The record expires two graces later, from the store too.
        gc.round(&mut store, 250 + 2 * 100, confirmed, |_| 0, true);
        assert_eq!(gc.records(), 0);
        assert!(!store.purged.contains_key(b"a".as_slice()));
    }

    #[test]
    fn a_key_written_again_is_not_purged() {
        let mut store = MemStore::default();
        let mut gc = TombstoneGc::new(100, 10, 1 << 20);
        store.put(b"k", &tombstone()).unwrap();
        gc.on_write(b"k", Some(0), 0);
        store.put(b"k", &value()).unwrap();
        gc.on_write(b"k", None, 10);
        assert!(gc.round(&mut store, 1000, |_| Some(u64::MAX), |_| 0, true).is_empty());
        assert!(store.value(b"k").is_some());
        assert_eq!(gc.pending(), 0);
    }

    #[test]
    fn records_read_back_at_start_are_kept_and_strip() {
        let mut gc = TombstoneGc::new(100, 10, 1);
        gc.load_record(b"k", tombstone().seen(), 0);
        gc.load_record(b"j", tombstone().seen(), 0);
        assert_eq!(gc.records(), 2, "kept past the bound");
        assert!(gc.strip(b"k", &value(), None).is_some());
    }
}
