//! One anti-entropy exchange this node started, as a state machine: answers come in
//! through [`Exchange::on_answer`], the pace's wake-up through [`Exchange::resume`],
//! and each returns the [`Step`] to take (requests to send the peer, or the end).
//!
//! What it needs of the rest of the node (the trees, reads of the store, the merge
//! of a peer's state, the pace) it asks of a [`Host`], so it runs alone over an
//! in-memory store in tests.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use qkv_proto::{AaeCompared, DvvSet, Error, KeyDigest, KeyState, NodeId, Request, Response};

use super::{AAE_TIMEOUT_MS, COMPARE_ENTRIES_MAX, THEIRS_BYTES_MAX, THEIRS_KEYS_MAX, state_bytes};
use crate::merkle::{RangeId, Trees};
use crate::pace::Pace;

/// The initiator stops adding leaves to a comparison at this many keys, key bytes or leaves.
const GROUP_ENTRIES: usize = 2048;
const GROUP_BYTES: usize = 1 << 20;
const GROUP_LEAVES: usize = 64;
/// Bytes per push batch.
const PUSH_BYTES_MAX: u64 = 1 << 20;
/// A group answered "more" this many rounds in a row without moving a state: give up.
const REPEATS_MAX: u32 = 64;

/// What an exchange uses of its node.
pub trait Host {
    /// Monotonic time, ms.
    fn now_ms(&self) -> u64;
    /// The ring's fingerprint (both sides must be on the same ring).
    fn fingerprint(&self) -> u64;
    /// This node's hash trees.
    fn trees(&self) -> &Trees;
    /// The range and leaf a key falls in, if this node replicates it.
    fn locate(&self, key: &[u8]) -> Option<(RangeId, u32)>;
    /// The keys of one leaf and their digests, at most `limit`.
    fn leaf_digests(&self, range: RangeId, leaf: u32, limit: usize) -> Result<Vec<KeyDigest>, Error>;
    /// The stored state of `key`.
    fn get(&self, key: &[u8]) -> Result<Option<DvvSet>, Error>;
    /// Merge a peer's state into this node's: true when the stored state changed.
    /// [`Error::KeyFull`] skips the key (and leaves its range unconfirmed).
    fn merge(&mut self, key: &[u8], set: &DvvSet) -> Result<bool, Error>;
    /// Make the merges durable (nobody waits on it).
    fn flush(&mut self);
    /// The node's anti-entropy pace.
    fn pace(&mut self) -> &mut Pace;
    /// The comparison of `range` with `peer` found it equal or not.
    fn in_sync(&mut self, range: RangeId, peer: NodeId, in_sync: bool);
    /// `n` keys were repaired (on either side).
    fn repaired(&mut self, n: u64);
}

/// What the exchange wants done next.
#[derive(Debug, PartialEq)]
pub enum Step {
    /// Send these to the peer, under the exchange's deadline ([`AAE_TIMEOUT_MS`]).
    Send(Vec<Request>),
    /// Wait: for answers already asked for, or for the pace ([`Exchange::wakeup_ms`]).
    Wait,
    /// The exchange is over; `ok`: it ran to its end ([`Exchange::confirmed`] tells
    /// which ranges it confirmed), else it failed and confirms none.
    Done { ok: bool },
}

#[derive(Debug)]
enum Waiting {
    Roots,
    Compare { range: RangeId, leaves: Vec<u32> },
    Pushes { left: usize, keys: u64, range: RangeId, leaves: Vec<u32>, more: bool },
    Budget { until: u64 },
}

/// See the module docs.
#[derive(Debug)]
pub struct Exchange {
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
    /// The peer asked for no comparison before this (its pace was spent).
    peer_wait_until: u64,
}

impl Exchange {
    /// An exchange with `peer` over every range the two share, and its first request.
    pub fn start(trees: &Trees, peer: NodeId, now: u64, fingerprint: u64) -> (Exchange, Request) {
        let ranges = trees.shared_with(peer);
        let roots = ranges.iter().map(|&r| (r, trees.root(r).unwrap_or(0))).collect();
        let x = Exchange {
            peer,
            started_ms: now,
            ranges,
            work: VecDeque::new(),
            waiting: Waiting::Roots,
            repeats: 0,
            incomplete: BTreeSet::new(),
            peer_wait_until: now,
        };
        (x, Request::AaeRoots { fingerprint, ranges: roots })
    }

    /// The peer.
    pub fn peer(&self) -> NodeId {
        self.peer
    }

    /// When it started: a complete exchange means the peer held all this node held then.
    pub fn started_ms(&self) -> u64 {
        self.started_ms
    }

    /// When to [`Exchange::resume`] (`None`: it waits on answers, not on the pace).
    pub fn wakeup_ms(&self) -> Option<u64> {
        match self.waiting {
            Waiting::Budget { until } => Some(until),
            _ => None,
        }
    }

    /// Once it ran to its end: whether it confirmed every range, and the ranges it did.
    pub fn confirmed(self) -> (bool, Vec<RangeId>) {
        let all = self.incomplete.is_empty();
        (all, self.ranges.into_iter().filter(|r| !self.incomplete.contains(r)).collect())
    }

    /// An answer from the peer (or the error its request ended with).
    pub fn on_answer(&mut self, host: &mut impl Host, result: Result<Response, Error>) -> Step {
        let waiting = std::mem::replace(&mut self.waiting, Waiting::Roots);
        match (waiting, result) {
            (Waiting::Roots, Ok(Response::AaeLeaves(list))) => self.plan(host, list),
            (Waiting::Compare { range, leaves }, Ok(Response::AaeCompared(c))) => {
                self.apply(host, range, leaves, c).unwrap_or_else(|e| {
                    tracing::debug!(peer = self.peer, "anti-entropy: {e}");
                    Step::Done { ok: false }
                })
            }
            (Waiting::Pushes { left, keys, range, leaves, more }, r) => {
                // A key refused at its merge limit leaves the range unconfirmed.
                match r {
                    Ok(Response::ReplicaAck) => {}
                    Ok(Response::ReplicaBatchAck { refused }) if refused.is_empty() => {}
                    _ => {
                        self.incomplete.insert(range);
                    }
                }
                if left > 1 {
                    self.waiting = Waiting::Pushes { left: left - 1, keys, range, leaves, more };
                    return Step::Wait;
                }
                if !self.incomplete.contains(&range) {
                    host.repaired(keys);
                }
                self.group_done(host, range, leaves, more, true)
            }
            (w, r) => {
                let e = match r {
                    Ok(other) => format!("node {} sent an unexpected answer {other:?} to {w:?}", self.peer),
                    Err(e) => e.to_string(),
                };
                tracing::debug!(peer = self.peer, "anti-entropy exchange failed: {e}");
                Step::Done { ok: false }
            }
        }
    }

    /// The pace's wait is over ([`Exchange::wakeup_ms`]).
    pub fn resume(&mut self, host: &mut impl Host) -> Step {
        self.step(host)
    }

    /// Step 1 answered: note equal ranges, queue the differing leaves of the rest.
    fn plan(&mut self, host: &mut impl Host, list: Vec<(u32, Vec<u64>)>) -> Step {
        let mut theirs: BTreeMap<RangeId, Vec<u64>> = BTreeMap::new();
        for (r, leaves) in list {
            if !self.ranges.contains(&r) {
                return Step::Done { ok: false };
            }
            theirs.insert(r, leaves);
        }
        let mut work = VecDeque::new();
        for &r in &self.ranges {
            match theirs.get(&r) {
                None => host.in_sync(r, self.peer, true),
                Some(t) => {
                    host.in_sync(r, self.peer, false);
                    let mine = host.trees().leaves(r).unwrap_or(&[]);
                    if mine.len() != t.len() {
                        return Step::Done { ok: false };
                    }
                    let diff: VecDeque<u32> =
                        mine.iter().zip(t).enumerate().filter(|(_, (a, b))| a != b).map(|(i, _)| i as u32).collect();
                    if !diff.is_empty() {
                        work.push_back((r, diff));
                    }
                }
            }
        }
        self.work = work;
        self.step(host)
    }

    /// Compare the next group of differing leaves, budget permitting.
    fn step(&mut self, host: &mut impl Host) -> Step {
        let now = host.now_ms();
        host.pace().refill(now);
        let wait = host.pace().wait_ms().max(self.peer_wait_until.saturating_sub(now));
        if wait > 0 {
            self.waiting = Waiting::Budget { until: now + wait };
            return Step::Wait;
        }
        let Some((range, mut pending)) = self.work.pop_front() else {
            return Step::Done { ok: true };
        };
        let mut leaves = vec![];
        let mut entries: Vec<KeyDigest> = vec![];
        let mut entry_bytes = 0;
        let mut truncated = false;
        while let Some(leaf) = pending.pop_front() {
            let left = COMPARE_ENTRIES_MAX - entries.len();
            match host.leaf_digests(range, leaf, left) {
                Ok(keys) => {
                    truncated |= keys.len() >= left;
                    entry_bytes += keys.iter().map(|e| e.key.len() + 8).sum::<usize>();
                    entries.extend(keys);
                }
                Err(e) => {
                    tracing::warn!("anti-entropy: reading leaf {leaf} of range {range}: {e}");
                    return Step::Done { ok: false };
                }
            }
            leaves.push(leaf);
            if entries.len() >= GROUP_ENTRIES || entry_bytes >= GROUP_BYTES || leaves.len() >= GROUP_LEAVES {
                break;
            }
        }
        if truncated {
            self.incomplete.insert(range);
        }
        if !pending.is_empty() {
            self.work.push_front((range, pending));
        }
        self.waiting = Waiting::Compare { range, leaves: leaves.clone() };
        Step::Send(vec![Request::AaeCompare { fingerprint: host.fingerprint(), range, leaves, entries }])
    }

    /// Step 2 answered: merge the peer's states, push back what it lacks or holds differently.
    fn apply<H: Host>(
        &mut self,
        host: &mut H,
        range: RangeId,
        leaves: Vec<u32>,
        c: AaeCompared,
    ) -> Result<Step, Error> {
        let in_group = |host: &H, key: &[u8]| host.locate(key).is_some_and(|(r, l)| r == range && leaves.contains(&l));
        let (mut keys, mut bytes) = (0u64, 0u64);
        let mut pushes: Vec<KeyState> = vec![];
        let mut push_bytes = 0u64;
        let mut more = c.more;
        let mut changed = false;
        for it in c.theirs {
            if !in_group(host, &it.key) || !it.set.is_valid() {
                return Err(Error::BadRequest("the peer sent a key outside the compared leaves".into()));
            }
            keys += 1;
            bytes += state_bytes(&it.key, &it.set);
            match host.merge(&it.key, &it.set) {
                Ok(true) => {
                    changed = true;
                    host.repaired(1);
                }
                Ok(false) => {}
                Err(e @ (Error::KeyFull { .. } | Error::Protocol(_))) => {
                    // One key past twice the per-key limit, or a state this node refuses
                    // (naming an implausible counter of its actor): repair the rest; the
                    // exchange then does not confirm the range, so its tombstones wait.
                    tracing::warn!(
                        key = %String::from_utf8_lossy(&it.key[..it.key.len().min(64)]),
                        "anti-entropy skips a key: {e}"
                    );
                    self.incomplete.insert(range);
                    continue;
                }
                Err(e) => return Err(e),
            }
            match host.get(&it.key)? {
                Some(mine) if mine != it.set => {
                    push_bytes += state_bytes(&it.key, &mine);
                    pushes.push(KeyState { key: it.key, set: mine });
                }
                _ => {}
            }
        }
        for key in c.missing {
            if !in_group(host, &key) {
                continue;
            }
            if push_bytes >= THEIRS_BYTES_MAX as u64 || pushes.len() >= THEIRS_KEYS_MAX {
                // The rest in the next round of this group: pushes stay bounded in memory.
                more = true;
                break;
            }
            if let Some(set) = host.get(&key)? {
                push_bytes += state_bytes(&key, &set);
                pushes.push(KeyState { key, set });
            }
        }
        keys += pushes.len() as u64;
        bytes += push_bytes;
        host.pace().charge(keys, bytes);
        if changed {
            host.flush();
        }
        self.peer_wait_until = host.now_ms() + c.wait_ms.min(AAE_TIMEOUT_MS);
        if pushes.is_empty() {
            return Ok(self.group_done(host, range, leaves, more, keys > 0));
        }
        let pushed = pushes.len() as u64;
        let batches = super::batches(pushes, PUSH_BYTES_MAX);
        self.waiting = Waiting::Pushes { left: batches.len(), keys: pushed, range, leaves, more };
        Ok(Step::Send(batches.into_iter().map(|items| Request::ReplicaPutBatch { items, sync: false }).collect()))
    }

    /// A group is done; `more`: the peer held states back, so compare it again.
    /// `progress`: this round moved at least one state (a round that moved none and
    /// still says "more" counts toward giving up).
    fn group_done(
        &mut self,
        host: &mut impl Host,
        range: RangeId,
        leaves: Vec<u32>,
        more: bool,
        progress: bool,
    ) -> Step {
        if progress {
            self.repeats = 0;
        }
        if more {
            self.repeats += 1;
            if self.repeats > REPEATS_MAX {
                self.incomplete.insert(range);
            } else {
                self.work.push_front((range, leaves.into()));
            }
        }
        self.step(host)
    }
}
