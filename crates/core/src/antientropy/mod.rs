//! Anti-entropy: one node's hash trees, its exchanges with peers, their pace, and
//! the tombstone GC that waits on them.
//!
//! Every `interval_ms` a node with no exchange running starts one with its next
//! up peer (round robin) over every range the two replicate:
//!
//! 1. `AaeRoots`: its root per range; the peer answers with its leaves of each
//!    range whose root differs;
//! 2. `AaeCompare`, per group of differing leaves: its keys and digests there; the
//!    peer answers with its states of the keys that differ or that this node
//!    lacks, and the keys it lacks itself;
//! 3. this node merges the peer's states, then pushes its merged state of every
//!    key the peer lacks or holds differently (`ReplicaPutBatch`, acked after the
//!    peer's flush): a DVV sync in both directions, of the differing keys only.
//!
//! Pace: one pair of token buckets per node ([`Pace`]), over key states and bytes.
//! They are charged for every state the node sends (answers to a peer's
//! comparison, its own pushes) and every state its own exchanges receive; the node
//! starts no comparison while they are in debt, and answers a peer's with no more
//! states than they allow (at least one, so every round progresses). So a node
//! sends at most `keys_per_s` states a second, and takes in at most that from its
//! own exchanges plus what its peers send it under their own paces.
//!
//! An exchange that completes tells this node the peer held everything this node
//! held when it started: what tombstone GC waits for. A tombstone is purged once
//! every other home replica of its range completed an exchange with this node
//! *that started after the tombstone was written*, and `tombstone_grace_ms`
//! passed; never on a timer alone. A purged key's clock is remembered for another
//! grace period, so an older state arriving late (a replica or hint that missed the
//! delete) is dropped, not resurrected.
//!
//! # Layout
//! - this file: [`AntiEntropy`], the subsystem's state (trees, pairs, pace, GC,
//!   the running exchange), its timers, settings and status;
//! - [`initiator`]: one exchange this node started, as a state machine over a
//!   [`Host`] (the store and the merge it may use);
//! - [`responder`]: the peer's side of steps 1 and 2, pure functions over the
//!   trees and a store.

pub mod initiator;
pub mod responder;

use std::collections::BTreeMap;

use qkv_proto::{DvvSet, Error, KeyDigest, NodeId, Request, Seen};

use crate::gc::TombstoneGc;
use crate::merkle::{RangeId, Trees, digest};
use crate::pace::Pace;
use crate::ring::{Ring, token};
use crate::router::Store;
pub use initiator::{Exchange, Host, Step};

/// Anti-entropy settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AaeConfig {
    /// Run exchanges at all (tombstones are never purged without them).
    pub enabled: bool,
    /// Pause between the end of one exchange and the start of the next.
    pub interval_ms: u64,
    /// Keys moved per second, both directions, at most (bursts of one second).
    pub keys_per_s: u64,
    /// Bytes of keys and values moved per second, at most.
    pub bytes_per_s: u64,
    /// How long a tombstone is kept after every home replica is known to hold it.
    pub tombstone_grace_ms: u64,
    /// Tombstones purged per GC round (one a second), at most.
    pub gc_batch: usize,
    /// Memory the purge records may take, at most ([`crate::tombstones`]): with the
    /// records full, GC waits, so GC keeps up with at most as many deletes per
    /// `PURGE_RECORD_GRACES` graces as records fit.
    pub purge_records_bytes_max: usize,
}

impl Default for AaeConfig {
    fn default() -> Self {
        AaeConfig {
            enabled: true,
            interval_ms: 2_000,
            keys_per_s: 1_000,
            bytes_per_s: 2 << 20,
            tombstone_grace_ms: 4 * 3600 * 1000,
            gc_batch: GC_BATCH,
            purge_records_bytes_max: PURGED_BYTES_MAX,
        }
    }
}

/// Deadline of one exchange request.
pub const AAE_TIMEOUT_MS: u64 = 10_000;
/// Most leaves one `AaeCompare` may name.
pub const COMPARE_LEAVES_MAX: usize = 1024;
/// Most keys one `AaeCompare` may list, and most keys a node scans for one.
pub const COMPARE_ENTRIES_MAX: usize = 65_536;
/// Most states in one `AaeCompared` answer or one group's pushes, and their bytes
/// (a frame holds at least 8 MiB).
pub const THEIRS_KEYS_MAX: usize = 1024;
/// See [`THEIRS_KEYS_MAX`].
pub const THEIRS_BYTES_MAX: usize = 2 << 20;
const GC_INTERVAL_MS: u64 = 1_000;
/// Default for [`AaeConfig::gc_batch`].
pub const GC_BATCH: usize = 10_000;
/// Default for [`AaeConfig::purge_records_bytes_max`]: about 760,000 records of
/// 16-byte keys with three-actor clocks.
pub const PURGED_BYTES_MAX: usize = 128 << 20;
const SCAN_PAGE: usize = 4096;

/// What this node knows of one (range, peer) pair.
#[derive(Clone, Copy, Debug, Default)]
struct Pair {
    /// When an exchange with this peer over this range last completed.
    done_ms: Option<u64>,
    /// When that exchange started: the peer then held all this node held.
    synced_from_ms: Option<u64>,
    /// The last comparison found the range equal.
    in_sync: bool,
}

/// Anti-entropy state of one node.
pub struct AntiEntropy {
    cfg: AaeConfig,
    me: NodeId,
    trees: Trees,
    /// The exchange this node started, with the router's id for it.
    exchange: Option<(u64, Exchange)>,
    next_ms: u64,
    next_gc_ms: u64,
    peer_turn: usize,
    pairs: BTreeMap<(RangeId, NodeId), Pair>,
    /// Tombstone GC and its purge records.
    gc: TombstoneGc,
    pace: Pace,
    exchanges: u64,
    exchanges_failed: u64,
    keys_repaired: u64,
}

/// What the timers ask of the router.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Due {
    /// A GC round is due.
    pub gc: bool,
    /// Start an exchange (none runs).
    pub start: bool,
    /// The running exchange's pace wait is over: step it.
    pub resume: bool,
}

impl AntiEntropy {
    /// The state of node `me` at `now_ms`, with empty trees.
    pub fn new(cfg: AaeConfig, ring: &Ring, me: NodeId, now_ms: u64) -> AntiEntropy {
        AntiEntropy {
            cfg,
            me,
            trees: Trees::new(ring, me),
            exchange: None,
            // The first exchange waits one interval: peers are still being detected.
            next_ms: now_ms + cfg.interval_ms,
            next_gc_ms: now_ms + GC_INTERVAL_MS,
            peer_turn: me as usize,
            pairs: BTreeMap::new(),
            gc: TombstoneGc::new(cfg.tombstone_grace_ms, cfg.gc_batch, cfg.purge_records_bytes_max),
            pace: Pace::new(cfg.keys_per_s, cfg.bytes_per_s, now_ms),
            exchanges: 0,
            exchanges_failed: 0,
            keys_repaired: 0,
        }
    }

    /// A key's stored state changed from the one of digest `old` to `new` (`None`: absent).
    pub fn on_write(&mut self, ring: &Ring, key: &[u8], old: Option<u64>, new: Option<&DvvSet>, now: u64) {
        let tok = token(key);
        self.trees.update(ring, tok, old, new.map(|n| digest(key, n)));
        let tombstone_in = new.is_some_and(DvvSet::is_deleted).then(|| self.trees.range_of(ring, tok));
        self.gc.on_write(key, tombstone_in, now);
    }

    /// `incoming` without the values a tombstone this node purged for `key` had
    /// deleted (`None`: nothing to strip). See [`crate::tombstones`].
    pub fn strip_purged(&self, key: &[u8], incoming: &DvvSet, local: Option<&DvvSet>) -> Option<DvvSet> {
        self.gc.strip(key, incoming, local)
    }

    /// The tombstone grace, ms.
    pub fn grace_ms(&self) -> u64 {
        self.cfg.tombstone_grace_ms
    }

    /// Whether anti-entropy (and so tombstone GC) runs.
    pub fn enabled(&self) -> bool {
        self.cfg.enabled
    }

    /// The hash trees.
    pub fn trees(&self) -> &Trees {
        &self.trees
    }

    /// The pace, which the exchange's host lends it.
    pub fn pace_mut(&mut self) -> &mut Pace {
        &mut self.pace
    }

    /// The trees, and the pace a peer's comparison is charged to.
    pub fn trees_and_pace(&mut self) -> (&Trees, &mut Pace) {
        (&self.trees, &mut self.pace)
    }

    /// A purge record read back at start: kept as long from now as a new one, even
    /// past the bound (a lower bound than before, or another load order): dropping
    /// it could bring a deleted value back. Over the bound, GC only waits.
    pub fn load_purged(&mut self, key: &[u8], seen: Seen, now: u64) {
        self.gc.load_record(key, seen, now);
    }

    /// Build the trees and the tombstone list from the store (once, at start),
    /// showing `visit` every state on the way.
    pub fn load<S: Store>(
        &mut self,
        store: &S,
        ring: &Ring,
        now: u64,
        mut visit: impl FnMut(&DvvSet),
    ) -> Result<(), Error> {
        scan_pages(store, 0, u64::MAX, usize::MAX, |key, set| {
            visit(&set);
            self.on_write(ring, &key, None, Some(&set), now)
        })
    }

    /// The ring changed (a new layout): new trees for this node's ranges on it,
    /// rebuilt from the store, and every pair's confirmation forgotten (GC waits for
    /// new exchanges). The exchange in flight is dropped; purge records stay.
    pub fn rebuild<S: Store>(&mut self, store: &S, ring: &Ring, now: u64) -> Result<(), Error> {
        self.trees = Trees::new(ring, self.me);
        self.pairs.clear();
        self.exchange = None;
        self.gc.clear_index();
        self.load(store, ring, now, |_| {})
    }

    /// When a timer is next due (`u64::MAX`: none).
    pub fn next_wakeup_ms(&self) -> u64 {
        if !self.cfg.enabled {
            return u64::MAX;
        }
        let ex = match &self.exchange {
            None => self.next_ms,
            Some((_, x)) => x.wakeup_ms().unwrap_or(u64::MAX),
        };
        ex.min(self.next_gc_ms)
    }

    /// Which timers are due at `now` (and re-arm the GC's).
    pub fn due(&mut self, now: u64) -> Due {
        let mut due = Due::default();
        if !self.cfg.enabled {
            return due;
        }
        if now >= self.next_gc_ms {
            self.next_gc_ms = now + GC_INTERVAL_MS;
            due.gc = true;
        }
        match &self.exchange {
            None => due.start = now >= self.next_ms,
            Some((_, x)) => due.resume = x.wakeup_ms().is_some_and(|t| now >= t),
        }
        due
    }

    /// The peer the next exchange goes to: the next one, round robin, of those this
    /// node shares a range with that is up. Re-arms the start timer either way.
    pub fn next_peer(&mut self, now: u64, is_up: impl Fn(NodeId) -> bool) -> Option<NodeId> {
        self.next_ms = now + self.cfg.interval_ms;
        let mut peers: Vec<NodeId> =
            self.trees.ranges().flat_map(|r| self.trees.home(r).to_vec()).filter(|&p| p != self.me).collect();
        peers.sort_unstable();
        peers.dedup();
        let peer = (0..peers.len()).map(|i| peers[(self.peer_turn + i) % peers.len()]).find(|&p| is_up(p))?;
        self.peer_turn = self.peer_turn.wrapping_add(1);
        Some(peer)
    }

    /// Start an exchange with `peer` under the router's id `op`: the request to send.
    pub fn start(&mut self, op: u64, peer: NodeId, now: u64, fingerprint: u64) -> Request {
        let (x, req) = Exchange::start(&self.trees, peer, now, fingerprint);
        self.exchange = Some((op, x));
        req
    }

    /// The router's id of the running exchange.
    pub fn exchange_op(&self) -> Option<u64> {
        self.exchange.as_ref().map(|(op, _)| *op)
    }

    /// Take the running exchange out to drive it (with `&mut` of the rest of the node
    /// as its [`Host`]); [`AntiEntropy::put_back`] returns it.
    pub fn take_exchange(&mut self) -> Option<(u64, Exchange)> {
        self.exchange.take()
    }

    /// Return an exchange that goes on.
    pub fn put_back(&mut self, op: u64, x: Exchange) {
        debug_assert!(self.exchange.is_none(), "one exchange at a time");
        self.exchange = Some((op, x));
    }

    /// The exchange ended: record which ranges it confirmed. `ok`: it ran to its end
    /// (it may still have left some ranges unconfirmed).
    pub fn finished(&mut self, x: Exchange, ok: bool, now: u64) {
        self.next_ms = now + self.cfg.interval_ms;
        if !ok {
            self.exchanges_failed += 1;
            return;
        }
        let (peer, started_ms) = (x.peer(), x.started_ms());
        let (all, confirmed) = x.confirmed();
        if all {
            self.exchanges += 1;
        } else {
            self.exchanges_failed += 1;
        }
        for r in confirmed {
            let p = self.pairs.entry((r, peer)).or_default();
            p.done_ms = Some(now);
            p.synced_from_ms = Some(started_ms);
        }
    }

    /// Whether the last comparison with `peer` found `range` equal.
    pub fn set_in_sync(&mut self, range: RangeId, peer: NodeId, in_sync: bool) {
        self.pairs.entry((range, peer)).or_default().in_sync = in_sync;
    }

    /// Count keys an exchange repaired.
    pub fn count_repaired(&mut self, n: u64) {
        self.keys_repaired += n;
    }

    /// A round of tombstone GC ([`crate::gc`]): a range counts as confirmed since the
    /// oldest start of its last complete exchange with each other home replica
    /// (`unconfirmed`, a bug variant: always). Returns how many were purged.
    pub fn gc_round<S: Store>(&mut self, store: &mut S, ring: &Ring, now: u64, unconfirmed: bool) -> usize {
        let me = self.me;
        let (trees, pairs) = (&self.trees, &self.pairs);
        let confirmed = |range: RangeId| -> Option<u64> {
            if unconfirmed {
                return Some(u64::MAX);
            }
            let home = trees.home(range);
            if home.is_empty() {
                return None;
            }
            home.iter()
                .filter(|&&p| p != me)
                .map(|&p| pairs.get(&(range, p)).and_then(|x| x.synced_from_ms))
                .try_fold(u64::MAX, |m, from| from.map(|f| m.min(f)))
        };
        let purged = self.gc.round(store, now, confirmed, |t| trees.range_of(ring, t), !unconfirmed);
        for (key, set) in &purged {
            self.on_write(ring, key, Some(digest(key, set)), None, now);
        }
        purged.len()
    }

    /// What anti-entropy reports of itself (for `qkv status` and the metrics).
    pub fn report(&self, now: u64) -> Report {
        let (keys_exchanged, bytes_exchanged) = self.pace.moved();
        let mut r = Report {
            enabled: self.cfg.enabled,
            exchanges: self.exchanges,
            exchanges_failed: self.exchanges_failed,
            keys_repaired: self.keys_repaired,
            keys_exchanged,
            bytes_exchanged,
            tombstones_pending: self.gc.pending() as u64,
            tombstones_index_incomplete: self.gc.index_incomplete(),
            purge_records: self.gc.records() as u64,
            tombstones_purged: self.gc.purged(),
            ..Report::default()
        };
        for range in self.trees.ranges() {
            let mut all = true;
            for &peer in self.trees.home(range).iter().filter(|&&p| p != self.me) {
                let p = self.pairs.get(&(range, peer)).copied().unwrap_or_default();
                all &= p.in_sync;
                r.pairs.push(PairReport {
                    range,
                    peer,
                    last_exchange_ago_ms: p.done_ms.map(|d| now.saturating_sub(d)),
                    in_sync: p.in_sync,
                });
            }
            if all {
                r.ranges_in_sync += 1;
            } else {
                r.ranges_out_of_sync += 1;
            }
        }
        r
    }
}

/// What anti-entropy reports of itself.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Report {
    /// Whether exchanges run at all.
    pub enabled: bool,
    /// Ranges whose last comparison with every peer found them equal.
    pub ranges_in_sync: u32,
    /// Ranges not (yet) found equal with every peer.
    pub ranges_out_of_sync: u32,
    /// Exchanges that confirmed every range they compared.
    pub exchanges: u64,
    /// Exchanges that failed or left a range unconfirmed.
    pub exchanges_failed: u64,
    /// Keys changed here, or acknowledged by a peer, through anti-entropy.
    pub keys_repaired: u64,
    /// States moved (received and sent), as charged to the pace.
    pub keys_exchanged: u64,
    /// Their bytes.
    pub bytes_exchanged: u64,
    /// Tombstones waiting for every home replica and the grace.
    pub tombstones_pending: u64,
    /// Tombstones purged since start.
    pub tombstones_purged: u64,
    /// The tombstone index was full and is being rebuilt from the store.
    pub tombstones_index_incomplete: bool,
    /// Purge records held.
    pub purge_records: u64,
    /// Per range and peer.
    pub pairs: Vec<PairReport>,
}

/// One (range, peer) pair.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PairReport {
    /// The range.
    pub range: RangeId,
    /// The peer.
    pub peer: NodeId,
    /// Since the last exchange that confirmed the range, ms (`None`: never).
    pub last_exchange_ago_ms: Option<u64>,
    /// The last comparison found the range equal.
    pub in_sync: bool,
}

/// Visit at most `limit` stored keys with tokens in `from..=to`, in order, reading a
/// page at a time so a range of large values never sits in memory whole.
fn scan_pages<S: Store>(
    store: &S,
    from: u64,
    to: u64,
    limit: usize,
    mut visit: impl FnMut(Vec<u8>, DvvSet),
) -> Result<(), Error> {
    let mut cursor: (u64, Vec<u8>) = (from, vec![]);
    let mut left = limit;
    while left > 0 {
        let want = SCAN_PAGE.min(left);
        let page = store.scan((cursor.0, &cursor.1), to, want)?;
        let full = page.len() == want;
        left -= page.len();
        let next = page.last().map(|(k, _)| crate::ring::after(k));
        for (key, set) in page {
            visit(key, set);
        }
        match next {
            Some(c) if full => cursor = c,
            _ => break,
        }
    }
    Ok(())
}

/// The keys of one leaf of `range` in `store` and their digests, at most `limit`.
pub fn leaf_digests<S: Store>(
    trees: &Trees,
    ring: &Ring,
    store: &S,
    range: RangeId,
    leaf: u32,
    limit: usize,
) -> Result<Vec<KeyDigest>, Error> {
    let mut out: Vec<KeyDigest> = vec![];
    for (a, b) in trees.leaf_spans(ring, range, leaf) {
        let left = limit.saturating_sub(out.len());
        scan_pages(store, a, b, left, |key, set| out.push(KeyDigest { digest: digest(&key, &set), key }))?;
    }
    Ok(out)
}

/// A state's size as counted against the bytes budget.
pub fn state_bytes(key: &[u8], set: &DvvSet) -> u64 {
    (key.len() + set.value_bytes() + 16 * set.siblings().len() + 16 * set.clock().0.len()) as u64
}

/// Key states in `ReplicaPutBatch`es a replica takes: at most
/// [`BATCH_KEYS_MAX`](crate::hints::BATCH_KEYS_MAX) keys and `bytes_max` bytes each (a
/// state larger than that goes alone).
pub(crate) fn batches(
    states: impl IntoIterator<Item = qkv_proto::KeyState>,
    bytes_max: u64,
) -> Vec<Vec<qkv_proto::KeyState>> {
    let mut batches: Vec<Vec<qkv_proto::KeyState>> = vec![];
    let mut size = 0;
    for s in states {
        let b = state_bytes(&s.key, &s.set);
        match batches.last_mut() {
            Some(last) if last.len() < crate::hints::BATCH_KEYS_MAX && size + b <= bytes_max => {
                size += b;
                last.push(s);
            }
            _ => {
                size = b;
                batches.push(vec![s]);
            }
        }
    }
    batches
}

#[cfg(test)]
mod tests;
