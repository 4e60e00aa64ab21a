//! Anti-entropy exchanges and tombstone GC.
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
//! Pace: one pair of token buckets per node, over key states and bytes. They are
//! charged for every state the node sends (answers to a peer's comparison, its
//! own pushes) and every state its own exchanges receive; the node starts no
//! comparison while they are in debt, and answers a peer's with no more states
//! than they allow (at least one, so every round progresses). So a node sends at
//! most `keys_per_s` states a second, and takes in at most that from its own
//! exchanges plus what its peers send it under their own paces. An exchange that completes
//! tells this node the peer held everything this node held when it started: what
//! tombstone GC waits for. A tombstone is purged once every other home replica
//! of its range completed an exchange with this node *that started after the
//! tombstone was written*, and `tombstone_grace_ms` passed; never on a timer alone.
//! A purged key's clock is remembered for another grace period, so an older state
//! arriving late (a replica or hint that missed the delete) is dropped, not
//! resurrected.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use qkv_proto::{AaeCompared, AaePair, AaeStatus, DvvSet, Error, KeyDigest, KeyState, NodeId, Request, Response, Seen};

use super::{Core, Op, OpId, Store, unexpected};
use crate::gc::TombstoneGc;
use crate::hints::BATCH_KEYS_MAX;
use crate::merkle::{RangeId, Trees, digest};
use crate::pace::Bucket;
use crate::ring::{Ring, token};

/// Anti-entropy settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
/// The initiator stops adding leaves to a comparison at this many keys, key bytes or leaves.
const GROUP_ENTRIES: usize = 2048;
const GROUP_BYTES: usize = 1 << 20;
const GROUP_LEAVES: usize = 64;
/// Most states in one `AaeCompared` answer, and their bytes (a frame holds at least 8 MiB).
const THEIRS_KEYS_MAX: usize = 1024;
const THEIRS_BYTES_MAX: usize = 2 << 20;
/// Bytes per push batch.
const PUSH_BYTES_MAX: usize = 1 << 20;
/// A group answered "more" this many rounds in a row without moving a state: give up.
const REPEATS_MAX: u32 = 64;
const GC_INTERVAL_MS: u64 = 1_000;
/// Default for [`AaeConfig::gc_batch`].
pub const GC_BATCH: usize = 10_000;
/// Default for [`AaeConfig::purge_records_bytes_max`]: about 760,000 records of
/// 16-byte keys with three-actor clocks.
pub const PURGED_BYTES_MAX: usize = 128 << 20;
const SCAN_PAGE: usize = 4096;

#[derive(Clone, Copy, Debug, Default)]
struct Pair {
    /// When an exchange with this peer over this range last completed.
    done_ms: Option<u64>,
    /// When that exchange started: the peer then held all this node held.
    synced_from_ms: Option<u64>,
    /// The last comparison found the range equal.
    in_sync: bool,
}

#[derive(Debug)]
enum Waiting {
    Roots,
    Compare { range: RangeId, leaves: Vec<u32> },
    Pushes { left: usize, keys: u64, range: RangeId, leaves: Vec<u32>, more: bool },
    Budget,
}

#[derive(Debug)]
struct Exchange {
    op: OpId,
    peer: NodeId,
    started_ms: u64,
    ranges: Vec<RangeId>,
    /// Differing leaves not compared yet, per range.
    work: VecDeque<(RangeId, VecDeque<u32>)>,
    waiting: Waiting,
    repeats: u32,
    /// Ranges where something was skipped: the exchange ends, but does not confirm them
    /// (so their tombstones wait); the other ranges are confirmed.
    incomplete: BTreeSet<RangeId>,
    wait_until: u64,
    /// The peer asked for no comparison before this (its pace was spent).
    peer_wait_until: u64,
}

/// Anti-entropy state of one node.
pub(super) struct AaeState {
    cfg: AaeConfig,
    me: NodeId,
    trees: Trees,
    exchange: Option<Exchange>,
    next_ms: u64,
    next_gc_ms: u64,
    peer_turn: usize,
    pairs: BTreeMap<(RangeId, NodeId), Pair>,
    /// Tombstone GC and its purge records.
    gc: TombstoneGc,
    keys: Bucket,
    bytes: Bucket,
    exchanges: u64,
    exchanges_failed: u64,
    keys_repaired: u64,
    keys_exchanged: u64,
    bytes_exchanged: u64,
}

impl AaeState {
    pub(super) fn new(cfg: AaeConfig, ring: &Ring, me: NodeId, now_ms: u64) -> AaeState {
        AaeState {
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
            keys: Bucket::new(cfg.keys_per_s.max(1), now_ms),
            bytes: Bucket::new(cfg.bytes_per_s.max(1), now_ms),
            exchanges: 0,
            exchanges_failed: 0,
            keys_repaired: 0,
            keys_exchanged: 0,
            bytes_exchanged: 0,
        }
    }

    /// A key's stored state changed from the one of digest `old` to `new` (`None`: absent).
    pub(super) fn on_write(&mut self, ring: &Ring, key: &[u8], old: Option<u64>, new: Option<&DvvSet>, now: u64) {
        let tok = token(key);
        self.trees.update(ring, tok, old, new.map(|n| digest(key, n)));
        let tombstone_in = new.is_some_and(DvvSet::is_deleted).then(|| self.trees.range_of(ring, tok));
        self.gc.on_write(key, tombstone_in, now);
    }

    /// `incoming` without the values a tombstone this node purged for `key` had
    /// deleted (`None`: nothing to strip). See [`crate::tombstones`].
    pub(super) fn strip_purged(&self, key: &[u8], incoming: &DvvSet, local: Option<&DvvSet>) -> Option<DvvSet> {
        self.gc.strip(key, incoming, local)
    }

    /// The tombstone grace, ms.
    pub(super) fn grace_ms(&self) -> u64 {
        self.cfg.tombstone_grace_ms
    }

    /// Whether anti-entropy (and so tombstone GC) runs.
    pub(super) fn enabled(&self) -> bool {
        self.cfg.enabled
    }

    /// A purge record read back at start: kept as long from now as a new one, even
    /// past the bound (a lower bound than before, or another load order): dropping
    /// it could bring a deleted value back. Over the bound, GC only waits.
    pub(super) fn load_purged(&mut self, key: &[u8], seen: Seen, now: u64) {
        self.gc.load_record(key, seen, now);
    }

    pub(super) fn next_wakeup_ms(&self) -> u64 {
        if !self.cfg.enabled {
            return u64::MAX;
        }
        let ex = match &self.exchange {
            None => self.next_ms,
            Some(x) if matches!(x.waiting, Waiting::Budget) => x.wait_until,
            Some(_) => u64::MAX,
        };
        ex.min(self.next_gc_ms)
    }

    fn refill(&mut self, now: u64) {
        self.keys.refill(now);
        self.bytes.refill(now);
    }

    /// Ms until both buckets are out of debt.
    fn wait_ms(&self) -> u64 {
        self.keys.wait_ms().max(self.bytes.wait_ms())
    }

    fn charge(&mut self, keys: u64, bytes: u64) {
        self.keys.spend(keys as f64);
        self.bytes.spend(bytes as f64);
        self.keys_exchanged += keys;
        self.bytes_exchanged += bytes;
    }

    fn pair(&mut self, range: RangeId, peer: NodeId) -> &mut Pair {
        self.pairs.entry((range, peer)).or_default()
    }

    pub(super) fn status(&self, now: u64) -> AaeStatus {
        let mut st = AaeStatus {
            enabled: self.cfg.enabled,
            exchanges: self.exchanges,
            exchanges_failed: self.exchanges_failed,
            keys_repaired: self.keys_repaired,
            keys_exchanged: self.keys_exchanged,
            bytes_exchanged: self.bytes_exchanged,
            tombstones_pending: self.gc.pending() as u64,
            tombstones_index_incomplete: self.gc.index_incomplete(),
            purge_records: self.gc.records() as u64,
            tombstones_purged: self.gc.purged(),
            ..AaeStatus::default()
        };
        for range in self.trees.ranges() {
            let mut all = true;
            for &peer in self.trees.home(range).iter().filter(|&&p| p != self.me) {
                let p = self.pairs.get(&(range, peer)).copied().unwrap_or_default();
                all &= p.in_sync;
                st.pairs.push(AaePair {
                    range,
                    peer,
                    last_exchange_ago_ms: p.done_ms.map(|d| now.saturating_sub(d)),
                    in_sync: p.in_sync,
                });
            }
            if all {
                st.ranges_in_sync += 1;
            } else {
                st.ranges_out_of_sync += 1;
            }
        }
        st
    }
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
        let next = page.last().map(|(k, _)| {
            // The smallest key after the last one seen, at its token.
            let mut after = k.clone();
            after.push(0);
            (token(k), after)
        });
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

/// A state's size as counted against the bytes budget.
fn state_bytes(key: &[u8], set: &DvvSet) -> u64 {
    (key.len() + set.value_bytes() + 16 * set.siblings().len() + 16 * set.clock().0.len()) as u64
}

impl<S: Store> Core<S> {
    /// Build the trees and the tombstone list from the store (once, at start).
    pub(super) fn load_trees(&mut self) -> Result<(), Error> {
        let now = self.now_ms;
        scan_pages(&self.store, 0, u64::MAX, usize::MAX, |key, set| {
            self.aae.on_write(&self.ring, &key, None, Some(&set), now);
        })
    }

    /// The keys of one leaf and their digests, at most `limit`.
    fn leaf_digests(&self, range: RangeId, leaf: u32, limit: usize) -> Result<Vec<KeyDigest>, Error> {
        let mut out: Vec<KeyDigest> = vec![];
        for (a, b) in self.aae.trees.leaf_spans(&self.ring, range, leaf) {
            let left = limit.saturating_sub(out.len());
            scan_pages(&self.store, a, b, left, |key, set| out.push(KeyDigest { digest: digest(&key, &set), key }))?;
        }
        Ok(out)
    }

    fn check_fingerprint(&self, fingerprint: u64) -> Result<(), Error> {
        if fingerprint != self.ring.fingerprint() {
            return Err(Error::BadRequest(format!(
                "node {} is on a different ring (members, vnodes or N differ): cannot compare trees",
                self.cfg.me
            )));
        }
        Ok(())
    }

    /// Exchange step 1, the peer's side: the leaves of every range whose root differs.
    pub(super) fn aae_roots(&self, fingerprint: u64, ranges: &[(u32, u64)]) -> Result<Response, Error> {
        self.check_fingerprint(fingerprint)?;
        let mut out = vec![];
        for &(range, root) in ranges {
            match (self.aae.trees.root(range), self.aae.trees.leaves(range)) {
                (Some(mine), Some(leaves)) => {
                    if mine != root {
                        out.push((range, leaves.to_vec()));
                    }
                }
                _ => {
                    return Err(Error::BadRequest(format!(
                        "node {} is not a home replica of range {range}",
                        self.cfg.me
                    )));
                }
            }
        }
        Ok(Response::AaeLeaves(out))
    }

    /// Exchange step 2, the peer's side: compare the sender's keys with this node's.
    pub(super) fn aae_compare(
        &mut self,
        fingerprint: u64,
        range: RangeId,
        leaves: &[u32],
        entries: Vec<KeyDigest>,
    ) -> Result<Response, Error> {
        self.check_fingerprint(fingerprint)?;
        let Some(all) = self.aae.trees.leaves(range) else {
            return Err(Error::BadRequest(format!("node {} is not a home replica of range {range}", self.cfg.me)));
        };
        if leaves.len() > COMPARE_LEAVES_MAX || entries.len() > COMPARE_ENTRIES_MAX {
            return Err(Error::BadRequest(format!(
                "a comparison holds at most {COMPARE_LEAVES_MAX} leaves and {COMPARE_ENTRIES_MAX} keys"
            )));
        }
        if let Some(l) = leaves.iter().find(|&&l| l as usize >= all.len()) {
            return Err(Error::BadRequest(format!("range {range} has no leaf {l}")));
        }
        for e in &entries {
            self.cfg.limits.check(&e.key, None)?;
        }
        let mut mine: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
        for &leaf in leaves {
            let left = COMPARE_ENTRIES_MAX.saturating_sub(mine.len());
            mine.extend(self.leaf_digests(range, leaf, left)?.into_iter().map(|e| (e.key, e.digest)));
        }
        // What this node sends counts against its own pace too: at most what its
        // buckets allow now (at least one state, so every round makes progress).
        self.aae.refill(self.now_ms);
        let keys_max = (self.aae.keys.tokens().max(1.0) as usize).min(THEIRS_KEYS_MAX);
        let bytes_max = (self.aae.bytes.tokens().max(1.0) as u64).min(THEIRS_BYTES_MAX as u64);
        let mut out = AaeCompared::default();
        let mut give = vec![];
        for e in entries {
            match mine.remove(&e.key) {
                None => out.missing.push(e.key),
                Some(d) if d != e.digest => give.push(e.key),
                Some(_) => {}
            }
        }
        give.extend(mine.into_keys());
        let mut bytes = 0u64;
        for key in give {
            if out.theirs.len() >= keys_max || (bytes >= bytes_max && !out.theirs.is_empty()) {
                out.more = true;
                break;
            }
            // Read again: only the states sent are ever held in memory.
            if let Some(set) = self.store.get(&key)? {
                bytes += state_bytes(&key, &set);
                out.theirs.push(KeyState { key, set });
            }
        }
        let sent = out.theirs.len() as u64;
        self.aae.charge(sent, bytes);
        if out.more {
            // Held back for the pace: tell the asker when there is budget again, rather
            // than have it ask (and both sides scan) in a tight loop.
            out.wait_ms = self.aae.wait_ms();
        }
        Ok(Response::AaeCompared(out))
    }

    /// Timers: tombstone GC, and starting or resuming this node's exchange.
    pub(super) fn aae_round(&mut self) {
        if !self.aae.cfg.enabled {
            return;
        }
        let now = self.now_ms;
        if now >= self.aae.next_gc_ms {
            self.aae.next_gc_ms = now + GC_INTERVAL_MS;
            self.gc_tombstones();
        }
        match &self.aae.exchange {
            None if now >= self.aae.next_ms => self.start_exchange(),
            Some(x) if matches!(x.waiting, Waiting::Budget) && now >= x.wait_until => self.aae_step(),
            _ => {}
        }
    }

    fn start_exchange(&mut self) {
        let now = self.now_ms;
        self.aae.next_ms = now + self.aae.cfg.interval_ms;
        let mut peers: Vec<NodeId> = self
            .aae
            .trees
            .ranges()
            .flat_map(|r| self.aae.trees.home(r).to_vec())
            .filter(|&p| p != self.cfg.me)
            .collect();
        peers.sort_unstable();
        peers.dedup();
        let Some(peer) =
            (0..peers.len()).map(|i| peers[(self.aae.peer_turn + i) % peers.len()]).find(|&p| self.is_up(p))
        else {
            return;
        };
        self.aae.peer_turn = self.aae.peer_turn.wrapping_add(1);
        let ranges = self.aae.trees.shared_with(peer);
        let roots = ranges.iter().map(|&r| (r, self.aae.trees.root(r).unwrap_or(0))).collect();
        let op = self.id();
        self.ops.insert(op, Op::Aae);
        self.aae.exchange = Some(Exchange {
            op,
            peer,
            started_ms: now,
            ranges,
            work: VecDeque::new(),
            waiting: Waiting::Roots,
            repeats: 0,
            incomplete: BTreeSet::new(),
            wait_until: now,
            peer_wait_until: now,
        });
        let fingerprint = self.ring.fingerprint();
        self.send(op, peer, Request::AaeRoots { fingerprint, ranges: roots }, AAE_TIMEOUT_MS);
    }

    pub(super) fn aae_response(&mut self, op_id: OpId, from: NodeId, result: Result<Response, Error>) {
        let Some(x) = self.aae.exchange.as_mut().filter(|x| x.op == op_id) else {
            self.ops.remove(&op_id);
            return;
        };
        let waiting = std::mem::replace(&mut x.waiting, Waiting::Roots);
        match (waiting, result) {
            (Waiting::Roots, Ok(Response::AaeLeaves(list))) => self.aae_plan(list),
            (Waiting::Compare { range, leaves }, Ok(Response::AaeCompared(c))) => {
                if let Err(e) = self.aae_apply(range, leaves, c) {
                    tracing::debug!(peer = from, "anti-entropy: {e}");
                    self.aae_finish(false);
                }
            }
            (Waiting::Pushes { left, keys, range, leaves, more }, r) => {
                // A key refused at its merge limit leaves the range unconfirmed.
                match r {
                    Ok(Response::ReplicaAck) => {}
                    Ok(Response::ReplicaBatchAck { refused }) if refused.is_empty() => {}
                    _ => {
                        x.incomplete.insert(range);
                    }
                }
                if left > 1 {
                    x.waiting = Waiting::Pushes { left: left - 1, keys, range, leaves, more };
                    return;
                }
                if !x.incomplete.contains(&range) {
                    self.aae.keys_repaired += keys;
                }
                self.aae_group_done(range, leaves, more, true);
            }
            (_, r) => {
                let e = match r {
                    Ok(other) => unexpected(from, &other),
                    Err(e) => e,
                };
                tracing::debug!(peer = from, "anti-entropy exchange failed: {e}");
                self.aae_finish(false);
            }
        }
    }

    /// Step 1 answered: note equal ranges, queue the differing leaves of the rest.
    fn aae_plan(&mut self, list: Vec<(u32, Vec<u64>)>) {
        let Some(x) = self.aae.exchange.as_mut() else { return };
        let (peer, ranges) = (x.peer, x.ranges.clone());
        let mut theirs: BTreeMap<RangeId, Vec<u64>> = BTreeMap::new();
        for (r, leaves) in list {
            if !ranges.contains(&r) {
                return self.aae_finish(false);
            }
            theirs.insert(r, leaves);
        }
        let mut work = VecDeque::new();
        for r in ranges {
            match theirs.get(&r) {
                None => self.aae.pair(r, peer).in_sync = true,
                Some(t) => {
                    self.aae.pair(r, peer).in_sync = false;
                    let mine = self.aae.trees.leaves(r).unwrap_or(&[]);
                    if mine.len() != t.len() {
                        return self.aae_finish(false);
                    }
                    let diff: VecDeque<u32> =
                        mine.iter().zip(t).enumerate().filter(|(_, (a, b))| a != b).map(|(i, _)| i as u32).collect();
                    if !diff.is_empty() {
                        work.push_back((r, diff));
                    }
                }
            }
        }
        if let Some(x) = self.aae.exchange.as_mut() {
            x.work = work;
        }
        self.aae_step();
    }

    /// Compare the next group of differing leaves, budget permitting.
    fn aae_step(&mut self) {
        let now = self.now_ms;
        self.aae.refill(now);
        let own = self.aae.wait_ms();
        let Some(x) = self.aae.exchange.as_mut() else { return };
        let wait = own.max(x.peer_wait_until.saturating_sub(now));
        if wait > 0 {
            x.waiting = Waiting::Budget;
            x.wait_until = now + wait;
            return;
        }
        let Some((range, mut pending)) = x.work.pop_front() else {
            return self.aae_finish(true);
        };
        let mut leaves = vec![];
        let mut entries: Vec<KeyDigest> = vec![];
        let mut entry_bytes = 0;
        let mut truncated = false;
        while let Some(leaf) = pending.pop_front() {
            let left = COMPARE_ENTRIES_MAX - entries.len();
            match self.leaf_digests(range, leaf, left) {
                Ok(keys) => {
                    truncated |= keys.len() >= left;
                    entry_bytes += keys.iter().map(|e| e.key.len() + 8).sum::<usize>();
                    entries.extend(keys);
                }
                Err(e) => {
                    tracing::warn!("anti-entropy: reading leaf {leaf} of range {range}: {e}");
                    return self.aae_finish(false);
                }
            }
            leaves.push(leaf);
            if entries.len() >= GROUP_ENTRIES || entry_bytes >= GROUP_BYTES || leaves.len() >= GROUP_LEAVES {
                break;
            }
        }
        let Some(x) = self.aae.exchange.as_mut() else { return };
        if truncated {
            x.incomplete.insert(range);
        }
        if !pending.is_empty() {
            x.work.push_front((range, pending));
        }
        let (op, peer) = (x.op, x.peer);
        x.waiting = Waiting::Compare { range, leaves: leaves.clone() };
        let fingerprint = self.ring.fingerprint();
        self.send(op, peer, Request::AaeCompare { fingerprint, range, leaves, entries }, AAE_TIMEOUT_MS);
    }

    /// Step 2 answered: merge the peer's states, push back what it lacks or holds differently.
    fn aae_apply(&mut self, range: RangeId, leaves: Vec<u32>, c: AaeCompared) -> Result<(), Error> {
        let in_group = |core: &Self, key: &[u8]| {
            core.aae.trees.locate(&core.ring, token(key)).is_some_and(|(r, l)| r == range && leaves.contains(&l))
        };
        let (mut keys, mut bytes) = (0u64, 0u64);
        let mut pushes: Vec<KeyState> = vec![];
        let mut push_bytes = 0u64;
        let mut more = c.more;
        let mut changed = false;
        for it in c.theirs {
            if !in_group(self, &it.key) || !it.set.is_valid() {
                return Err(Error::BadRequest("the peer sent a key outside the compared leaves".into()));
            }
            keys += 1;
            bytes += state_bytes(&it.key, &it.set);
            match self.merge_in(&it.key, &it.set) {
                Ok(true) => {
                    changed = true;
                    self.aae.keys_repaired += 1;
                }
                Ok(false) => {}
                Err(e @ Error::KeyFull { .. }) => {
                    // One key past twice the per-key limit: repair the rest; the exchange
                    // then does not confirm the range, so its tombstones wait.
                    tracing::warn!(
                        key = %String::from_utf8_lossy(&it.key[..it.key.len().min(64)]),
                        "anti-entropy skips a key: {e}"
                    );
                    if let Some(x) = self.aae.exchange.as_mut() {
                        x.incomplete.insert(range);
                    }
                    continue;
                }
                Err(e) => return Err(e),
            }
            match self.store.get(&it.key)? {
                Some(mine) if mine != it.set => {
                    push_bytes += state_bytes(&it.key, &mine);
                    pushes.push(KeyState { key: it.key, set: mine });
                }
                _ => {}
            }
        }
        for key in c.missing {
            if !in_group(self, &key) {
                continue;
            }
            if push_bytes >= THEIRS_BYTES_MAX as u64 || pushes.len() >= THEIRS_KEYS_MAX {
                // The rest in the next round of this group: pushes stay bounded in memory.
                more = true;
                break;
            }
            if let Some(set) = self.store.get(&key)? {
                push_bytes += state_bytes(&key, &set);
                pushes.push(KeyState { key, set });
            }
        }
        keys += pushes.len() as u64;
        bytes += push_bytes;
        self.aae.charge(keys, bytes);
        if changed {
            self.flush_unawaited();
        }
        let now = self.now_ms;
        let Some(x) = self.aae.exchange.as_mut() else { return Ok(()) };
        x.peer_wait_until = now + c.wait_ms.min(AAE_TIMEOUT_MS);
        let (op, peer) = (x.op, x.peer);
        if pushes.is_empty() {
            self.aae_group_done(range, leaves, more, keys > 0);
            return Ok(());
        }
        let pushed = pushes.len() as u64;
        let mut batches: Vec<Vec<KeyState>> = vec![];
        let mut size = 0;
        for p in pushes {
            let b = state_bytes(&p.key, &p.set) as usize;
            match batches.last_mut() {
                Some(last) if last.len() < BATCH_KEYS_MAX && size + b <= PUSH_BYTES_MAX => {
                    size += b;
                    last.push(p);
                }
                _ => {
                    size = b;
                    batches.push(vec![p]);
                }
            }
        }
        x.waiting = Waiting::Pushes { left: batches.len(), keys: pushed, range, leaves, more };
        for items in batches {
            self.send(op, peer, Request::ReplicaPutBatch { items }, AAE_TIMEOUT_MS);
        }
        Ok(())
    }

    /// A group is done; `more`: the peer held states back, so compare it again.
    /// `progress`: this round moved at least one state (a round that moved none and
    /// still says "more" counts toward giving up).
    fn aae_group_done(&mut self, range: RangeId, leaves: Vec<u32>, more: bool, progress: bool) {
        let Some(x) = self.aae.exchange.as_mut() else { return };
        if progress {
            x.repeats = 0;
        }
        if more {
            x.repeats += 1;
            if x.repeats > REPEATS_MAX {
                x.incomplete.insert(range);
            } else {
                x.work.push_front((range, leaves.into()));
            }
        }
        self.aae_step();
    }

    fn aae_finish(&mut self, ok: bool) {
        let Some(x) = self.aae.exchange.take() else { return };
        self.ops.remove(&x.op);
        let now = self.now_ms;
        self.aae.next_ms = now + self.aae.cfg.interval_ms;
        if !ok {
            self.aae.exchanges_failed += 1;
            return;
        }
        if x.incomplete.is_empty() {
            self.aae.exchanges += 1;
        } else {
            self.aae.exchanges_failed += 1;
        }
        for r in x.ranges.into_iter().filter(|r| !x.incomplete.contains(r)) {
            let p = self.aae.pair(r, x.peer);
            p.done_ms = Some(now);
            p.synced_from_ms = Some(x.started_ms);
        }
    }

    /// A round of tombstone GC ([`crate::gc`]): a range counts as confirmed since the
    /// oldest start of its last complete exchange with each other home replica.
    fn gc_tombstones(&mut self) {
        let now = self.now_ms;
        let me = self.cfg.me;
        let unconfirmed = self.cfg.bugs().gc_unconfirmed;
        let aae = &mut self.aae;
        let (trees, pairs, ring) = (&aae.trees, &aae.pairs, &self.ring);
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
        let purged = aae.gc.round(&mut self.store, now, confirmed, |t| trees.range_of(ring, t), !unconfirmed);
        for (key, set) in &purged {
            self.aae.on_write(&self.ring, key, Some(digest(key, set)), None, now);
        }
        if !purged.is_empty() {
            self.flush_unawaited();
        }
    }
}
