//! Hint bookkeeping for hinted handoff, sans-IO.
//!
//! A stand-in keeps hints in its store (durable, keyed by owner and key); this
//! index mirrors their sizes and ages in memory so that limits are checked and
//! the backlog reported without reading the store. It is rebuilt from the store
//! at start. Hint sizes are approximate: key + values + [`HINT_OVERHEAD_BYTES`].
//!
//! Handoff is paced by a token bucket of `rate_bytes_per_s` (burst: one second
//! of tokens), one batch in flight per owner, each batch at most
//! `batch_bytes_max` bytes and [`BATCH_KEYS_MAX`] keys.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use qkv_proto::NodeId;

use crate::pace::Bucket;

/// Per-hint overhead counted towards the limits (clock, dots, record framing).
pub const HINT_OVERHEAD_BYTES: u64 = 64;
/// Most keys in one handoff batch.
pub const BATCH_KEYS_MAX: usize = 256;
/// Window over which handoff rates are measured.
pub const RATE_WINDOW_MS: u64 = 10_000;

/// Limits on the hints one node holds.
#[derive(Clone, Copy, Debug, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HintLimits {
    /// All hints, bytes.
    pub total_bytes_max: u64,
    /// Hints for one owner, bytes.
    pub owner_bytes_max: u64,
    /// No new hints for an owner down longer than this (Cassandra's max_hint_window).
    pub window_ms: u64,
    /// Handoff pace, bytes per second.
    pub rate_bytes_per_s: u64,
    /// Largest handoff batch, bytes.
    pub batch_bytes_max: u64,
}

impl Default for HintLimits {
    fn default() -> Self {
        HintLimits {
            total_bytes_max: 1 << 30,
            owner_bytes_max: 256 << 20,
            window_ms: 3 * 3600 * 1000,
            rate_bytes_per_s: 16 << 20,
            batch_bytes_max: 1 << 20,
        }
    }
}

/// The approximate bytes a hint holds.
pub fn hint_bytes(key: &[u8], value_bytes: usize) -> u64 {
    key.len() as u64 + value_bytes as u64 + HINT_OVERHEAD_BYTES
}

#[derive(Debug, Default)]
struct Owner {
    keys: BTreeMap<Vec<u8>, (u64, u64)>,
    by_age: BTreeSet<(u64, Vec<u8>)>,
    bytes: u64,
    in_flight: bool,
    cursor: Vec<u8>,
    /// Recent deliveries: (time, hints, bytes).
    delivered: VecDeque<(u64, u64, u64)>,
    /// Hints a home replica refused (their key past its merge limit there), and when
    /// to offer them again; only keys held.
    resting: BTreeMap<Vec<u8>, u64>,
}

impl Owner {
    /// True while the hint for `key` rests after a refusal.
    fn rests(&self, key: &[u8], now_ms: u64) -> bool {
        self.resting.get(key).is_some_and(|&until| now_ms < until)
    }
}

/// A hint a home replica refused is offered again after this long.
pub const REFUSED_RETRY_MS: u64 = 30_000;

/// Sizes and ages of the hints this node holds, and handoff pacing.
#[derive(Debug)]
pub struct HintIndex {
    limits: HintLimits,
    owners: BTreeMap<NodeId, Owner>,
    bytes: u64,
    tokens: Bucket,
    /// Hints refused since start.
    pub refused: u64,
    /// Hints handed off since start.
    pub handed_off: u64,
    /// Hints handed to another home replica of their key since start (their owner
    /// stayed down past half the tombstone grace).
    pub redirected: u64,
    /// Hints dropped since start, older than the tombstone grace.
    pub expired: u64,
}

impl HintIndex {
    /// An empty index.
    pub fn new(limits: HintLimits, now_ms: u64) -> Self {
        HintIndex {
            limits,
            owners: BTreeMap::new(),
            bytes: 0,
            tokens: Bucket::new(limits.rate_bytes_per_s, now_ms),
            refused: 0,
            handed_off: 0,
            redirected: 0,
            expired: 0,
        }
    }

    /// The limits.
    pub fn limits(&self) -> HintLimits {
        self.limits
    }

    /// Whether a hint for `owner`, `key` of `bytes` fits (replacing the one held, if any).
    pub fn admit(&self, owner: NodeId, key: &[u8], bytes: u64) -> Result<(), String> {
        let o = self.owners.get(&owner);
        let old = o.and_then(|o| o.keys.get(key)).map_or(0, |e| e.0);
        let owner_bytes = o.map_or(0, |o| o.bytes) - old + bytes;
        let total = self.bytes - old + bytes;
        if owner_bytes > self.limits.owner_bytes_max {
            return Err(format!(
                "hints for node {owner} would hold {owner_bytes} bytes, over the per-owner limit of {}",
                self.limits.owner_bytes_max
            ));
        }
        if total > self.limits.total_bytes_max {
            return Err(format!("hints would hold {total} bytes, over the limit of {}", self.limits.total_bytes_max));
        }
        Ok(())
    }

    /// Record a stored hint (new or replaced), last written at `created_ms`.
    pub fn record(&mut self, owner: NodeId, key: &[u8], bytes: u64, created_ms: u64) {
        let o = self.owners.entry(owner).or_default();
        // A new write may make it deliverable: offer it at once.
        o.resting.remove(key);
        if let Some(&(old_bytes, old_created)) = o.keys.get(key) {
            o.bytes -= old_bytes;
            self.bytes -= old_bytes;
            o.by_age.remove(&(old_created, key.to_vec()));
        }
        o.by_age.insert((created_ms, key.to_vec()));
        o.keys.insert(key.to_vec(), (bytes, created_ms));
        o.bytes += bytes;
        self.bytes += bytes;
    }

    /// Forget a hint (handed off).
    pub fn remove(&mut self, owner: NodeId, key: &[u8]) {
        let Some(o) = self.owners.get_mut(&owner) else { return };
        o.resting.remove(key);
        if let Some((bytes, created)) = o.keys.remove(key) {
            o.by_age.remove(&(created, key.to_vec()));
            o.bytes -= bytes;
            self.bytes -= bytes;
        }
    }

    /// Owners for which hints are held for `key`.
    pub fn owners_of(&self, key: &[u8]) -> Vec<NodeId> {
        self.owners.iter().filter(|(_, o)| o.keys.contains_key(key)).map(|(&id, _)| id).collect()
    }

    /// Owners for which hints are held.
    pub fn owners_held(&self) -> Vec<NodeId> {
        self.owners.iter().filter(|(_, o)| !o.keys.is_empty()).map(|(&id, _)| id).collect()
    }

    /// Owners with hints pending and no batch in flight.
    pub fn ready_owners(&self) -> Vec<NodeId> {
        self.owners.iter().filter(|(_, o)| !o.keys.is_empty() && !o.in_flight).map(|(&id, _)| id).collect()
    }

    /// Choose the next batch for `owner` within the pace, and mark it in flight.
    /// Keys are taken in order from where the last batch stopped, wrapping around.
    pub fn next_batch(&mut self, owner: NodeId, now_ms: u64) -> Vec<Vec<u8>> {
        self.tokens.refill(now_ms);
        let budget = (self.tokens.tokens().max(0.0) as u64).min(self.limits.batch_bytes_max);
        let Some(o) = self.owners.get_mut(&owner) else { return vec![] };
        if budget == 0 || o.in_flight || o.keys.is_empty() {
            return vec![];
        }
        let after = o.keys.range::<Vec<u8>, _>((std::ops::Bound::Excluded(&o.cursor), std::ops::Bound::Unbounded));
        let mut picked = vec![];
        let mut used = 0u64;
        // One lap at most: resting keys are passed over, not picked.
        for (k, (bytes, _)) in after.chain(o.keys.iter()).take(o.keys.len()) {
            if picked.len() == BATCH_KEYS_MAX || (used > 0 && used + bytes > budget) {
                break;
            }
            if o.rests(k, now_ms) {
                continue;
            }
            used += bytes;
            picked.push(k.clone());
        }
        if let Some(last) = picked.last() {
            o.cursor = last.clone();
            o.in_flight = true;
            self.tokens.spend(used as f64);
        }
        picked
    }

    /// A home replica refused the hint for `owner`, `key`: offer it again only after
    /// [`REFUSED_RETRY_MS`], so it does not take every batch's place.
    pub fn refused_by_owner(&mut self, owner: NodeId, key: &[u8], now_ms: u64) {
        if let Some(o) = self.owners.get_mut(&owner)
            && o.keys.contains_key(key)
        {
            o.resting.insert(key.to_vec(), now_ms + REFUSED_RETRY_MS);
        }
    }

    /// True while the hint for `owner`, `key` rests after a refusal.
    pub fn is_resting(&self, owner: NodeId, key: &[u8], now_ms: u64) -> bool {
        self.owners.get(&owner).is_some_and(|o| o.rests(key, now_ms))
    }

    /// Hints for `owner` created at or before `cutoff` (wall ms), oldest first, at most `limit`.
    pub fn older_than(&self, owner: NodeId, cutoff: u64, limit: usize) -> Vec<Vec<u8>> {
        let Some(o) = self.owners.get(&owner) else { return vec![] };
        o.by_age.iter().take_while(|(t, _)| *t <= cutoff).take(limit).map(|(_, k)| k.clone()).collect()
    }

    /// Whether the pace allows a batch now (refilled to `now_ms`).
    pub fn can_send(&mut self, now_ms: u64) -> bool {
        self.tokens.refill(now_ms);
        self.tokens.tokens() > 0.0
    }

    /// Mark a batch for `owner` of `bytes` in flight outside [`HintIndex::next_batch`]
    /// (one sent to another home replica), within the pace; false when over it.
    pub fn start_batch(&mut self, owner: NodeId, bytes: u64, now_ms: u64) -> bool {
        self.tokens.refill(now_ms);
        let Some(o) = self.owners.get_mut(&owner) else { return false };
        if o.in_flight || self.tokens.tokens() <= 0.0 {
            return false;
        }
        o.in_flight = true;
        self.tokens.spend(bytes as f64);
        true
    }

    /// A batch for `owner` finished; `delivered` hints (of `bytes`) were handed off.
    pub fn batch_done(&mut self, owner: NodeId, delivered: u64, bytes: u64, now_ms: u64) {
        if let Some(o) = self.owners.get_mut(&owner) {
            o.in_flight = false;
            if delivered > 0 {
                o.delivered.push_back((now_ms, delivered, bytes));
            }
            while o.delivered.front().is_some_and(|e| now_ms.saturating_sub(e.0) > RATE_WINDOW_MS) {
                o.delivered.pop_front();
            }
        }
        self.handed_off += delivered;
    }

    /// Hints held and their bytes.
    pub fn totals(&self) -> (u64, u64) {
        (self.owners.values().map(|o| o.keys.len() as u64).sum(), self.bytes)
    }

    /// The backlog per owner. Rates are measured on the monotonic `now_ms` (the clock
    /// of [`HintIndex::batch_done`]); hint ages on `wall_ms` (the clock of their
    /// creation times, which must survive restarts). `up` says whether an owner is up.
    pub fn report(&self, now_ms: u64, wall_ms: u64, up: impl Fn(NodeId) -> bool) -> Vec<OwnerReport> {
        self.owners
            .iter()
            .filter(|(_, o)| {
                !o.keys.is_empty() || o.delivered.back().is_some_and(|e| now_ms.saturating_sub(e.0) <= RATE_WINDOW_MS)
            })
            .map(|(&owner, o)| {
                let recent = o.delivered.iter().filter(|e| now_ms.saturating_sub(e.0) <= RATE_WINDOW_MS);
                let (hints, bytes) = recent.fold((0u64, 0u64), |(h, b), e| (h + e.1, b + e.2));
                let secs = RATE_WINDOW_MS as f64 / 1000.0;
                let rate_bytes = bytes as f64 / secs;
                OwnerReport {
                    owner,
                    owner_up: up(owner),
                    count: o.keys.len() as u64,
                    bytes: o.bytes,
                    oldest_age_ms: o.by_age.first().map_or(0, |(t, _)| wall_ms.saturating_sub(*t)),
                    rate_hints_per_s: hints as f64 / secs,
                    rate_bytes_per_s: rate_bytes,
                    drain_eta_ms: (rate_bytes > 0.0).then(|| (o.bytes as f64 / rate_bytes * 1000.0) as u64),
                }
            })
            .collect()
    }
}

/// The hints one node holds for one owner.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OwnerReport {
    /// The home replica the hints are for.
    pub owner: NodeId,
    /// Whether this node sees the owner up.
    pub owner_up: bool,
    /// Hints held.
    pub count: u64,
    /// Their bytes, as counted against the limits.
    pub bytes: u64,
    /// Since the last write of the oldest hint, ms (wall clock).
    pub oldest_age_ms: u64,
    /// Handoff rate over the last 10 s, hints/s.
    pub rate_hints_per_s: f64,
    /// Handoff rate over the last 10 s, bytes/s.
    pub rate_bytes_per_s: f64,
    /// Time to drain at that rate, ms (`None` when nothing moves).
    pub drain_eta_ms: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> HintLimits {
        HintLimits {
            total_bytes_max: 1000,
            owner_bytes_max: 600,
            window_ms: 10_000,
            rate_bytes_per_s: 500,
            batch_bytes_max: 300,
        }
    }

    #[test]
    fn limits_are_enforced_per_owner_and_in_total() {
        let mut ix = HintIndex::new(limits(), 0);
        ix.record(2, b"a", 500, 0);
        assert!(ix.admit(2, b"b", 101).unwrap_err().contains("per-owner limit of 600"));
        assert!(ix.admit(2, b"a", 600).is_ok(), "replacing a hint counts only the difference");
        ix.record(3, b"a", 450, 0);
        assert!(ix.admit(4, b"a", 51).unwrap_err().contains("over the limit of 1000"));
        ix.remove(2, b"a");
        assert_eq!(ix.totals(), (1, 450));
    }

    #[test]
    fn batches_follow_the_pace_and_wrap_around() {
        let mut ix = HintIndex::new(limits(), 0);
        for k in [b"a", b"b", b"c", b"d"] {
            ix.record(2, k, 100, 0);
        }
        assert_eq!(ix.next_batch(2, 0), vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()], "batch_bytes_max 300");
        assert!(ix.next_batch(2, 0).is_empty(), "one batch in flight per owner");
        ix.batch_done(2, 0, 0, 0);
        // 200 tokens left: "d", then wrap to "a".
        assert_eq!(ix.next_batch(2, 0), vec![b"d".to_vec(), b"a".to_vec()]);
        ix.batch_done(2, 0, 0, 0);
        assert!(ix.next_batch(2, 0).is_empty(), "out of tokens");
        assert_eq!(ix.next_batch(2, 400).len(), 2, "200 tokens refilled in 400 ms at 500 B/s");
    }

    #[test]
    fn the_report_gives_ages_rates_and_a_drain_estimate() {
        let mut ix = HintIndex::new(limits(), 0);
        ix.record(2, b"a", 100, 1000);
        ix.record(2, b"b", 100, 2000);
        ix.record(2, b"a", 120, 5000);
        let r = ix.report(0, 6000, |_| true);
        // "a" took a write at 5000: its age restarts, so "b" is the oldest.
        assert_eq!((r[0].count, r[0].bytes, r[0].oldest_age_ms), (2, 220, 4000));
        assert_eq!(r[0].drain_eta_ms, None, "nothing has moved yet");
        ix.batch_done(2, 10, 1000, 6000);
        let r = ix.report(7000, 0, |_| false);
        assert_eq!(r[0].rate_bytes_per_s, 100.0);
        assert_eq!(r[0].rate_hints_per_s, 1.0);
        assert_eq!(r[0].drain_eta_ms, Some(2200));
        assert!(!r[0].owner_up);
    }

    #[test]
    fn a_refused_hint_rests_while_the_others_are_batched() {
        let mut ix = HintIndex::new(HintLimits { rate_bytes_per_s: 1 << 30, batch_bytes_max: 1 << 30, ..limits() }, 0);
        for k in [b"a", b"b", b"c"] {
            ix.record(2, k, 10, 0);
        }
        ix.refused_by_owner(2, b"b", 0);
        assert!(ix.is_resting(2, b"b", 1) && !ix.is_resting(2, b"a", 1));
        assert_eq!(ix.next_batch(2, 1), vec![b"a".to_vec(), b"c".to_vec()]);
        ix.batch_done(2, 0, 0, 1);
        assert_eq!(ix.next_batch(2, 2), vec![b"a".to_vec(), b"c".to_vec()], "one lap, the resting key passed over");
        ix.batch_done(2, 0, 0, 2);
        assert_eq!(ix.next_batch(2, REFUSED_RETRY_MS).len(), 3, "offered again after the rest");
        ix.batch_done(2, 0, 0, REFUSED_RETRY_MS);
        ix.refused_by_owner(2, b"b", REFUSED_RETRY_MS);
        ix.remove(2, b"b");
        assert!(!ix.is_resting(2, b"b", REFUSED_RETRY_MS), "forgotten with the hint");
    }
}
