//! Time to all replicas: how long after a write's ack the last of its home
//! replicas applied it, by replication, read repair or hinted handoff.
//!
//! At the ack the coordinator notes which home replicas still lack the write.
//! Late acks clear them; every second the coordinator asks (a bounded number of)
//! the others whether their state covers the write's dot yet. When none is
//! missing, the elapsed time is a sample for the driver to record.
//!
//! A sans-IO state machine of its own: [`LagTracker::probes`] says whom to ask,
//! the router sends the `ReplicaGet`s and reports each answer back through
//! [`LagTracker::probed`].

use std::collections::{BTreeMap, BTreeSet};

use qkv_proto::{Dot, NodeId};

/// Writes tracked at once; the oldest is dropped beyond this.
pub const TRACKED_MAX: usize = 4096;
/// Samples kept until the driver takes them.
pub const SAMPLES_MAX: usize = 8192;
/// A write still missing somewhere after this long stops being tracked.
pub const TRACK_MS_MAX: u64 = 3_600_000;
/// How often missing replicas are asked.
pub const PROBE_INTERVAL_MS: u64 = 1000;
/// Probes sent per round.
pub const PROBES_PER_ROUND_MAX: usize = 64;

#[derive(Debug)]
struct Track {
    key: Vec<u8>,
    dot: Dot,
    acked_ms: u64,
    missing: BTreeSet<NodeId>,
    probing: BTreeSet<NodeId>,
}

/// Writes not yet on every home replica, and the samples of those that made it.
#[derive(Debug, Default)]
pub struct LagTracker {
    tracks: BTreeMap<u64, Track>,
    next: u64,
    samples: Vec<u64>,
    /// Writes that stopped being tracked (too many, or too old) before reaching every replica.
    pub untracked: u64,
    next_probe_ms: u64,
}

impl LagTracker {
    /// Start tracking a write acked at `now_ms` that `missing` home replicas lack.
    pub fn start(&mut self, key: &[u8], dot: Dot, now_ms: u64, missing: BTreeSet<NodeId>) -> Option<u64> {
        if missing.is_empty() {
            self.sample(0);
            return None;
        }
        if self.tracks.len() >= TRACKED_MAX {
            self.tracks.pop_first();
            self.untracked += 1;
        }
        self.next += 1;
        let t = Track { key: key.to_vec(), dot, acked_ms: now_ms, missing, probing: BTreeSet::new() };
        self.tracks.insert(self.next, t);
        Some(self.next)
    }

    /// Replica `node` holds the write.
    pub fn applied(&mut self, track: u64, node: NodeId, now_ms: u64) {
        let Some(t) = self.tracks.get_mut(&track) else { return };
        t.missing.remove(&node);
        t.probing.remove(&node);
        if t.missing.is_empty() {
            let lag = now_ms.saturating_sub(t.acked_ms);
            self.tracks.remove(&track);
            self.sample(lag);
        }
    }

    fn sample(&mut self, ms: u64) {
        if self.samples.len() < SAMPLES_MAX {
            self.samples.push(ms);
        }
    }

    /// Samples (ms) since the last call.
    pub fn take_samples(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.samples)
    }

    /// Writes tracked now.
    pub fn tracked(&self) -> usize {
        self.tracks.len()
    }

    /// At most once per [`PROBE_INTERVAL_MS`]: drop writes tracked too long, then
    /// the (track, replica, key) probes to send to missing replicas that are `up`
    /// and not being asked already, at most [`PROBES_PER_ROUND_MAX`].
    pub fn probes(&mut self, now_ms: u64, up: impl Fn(NodeId) -> bool) -> Vec<(u64, NodeId, Vec<u8>)> {
        if now_ms < self.next_probe_ms {
            return vec![];
        }
        self.next_probe_ms = now_ms + PROBE_INTERVAL_MS;
        let before = self.tracks.len();
        self.tracks.retain(|_, t| now_ms.saturating_sub(t.acked_ms) < TRACK_MS_MAX);
        self.untracked += (before - self.tracks.len()) as u64;
        let mut probes = vec![];
        for (&id, t) in &mut self.tracks {
            for &node in &t.missing {
                if probes.len() < PROBES_PER_ROUND_MAX && !t.probing.contains(&node) && up(node) {
                    probes.push((id, node, t.key.clone()));
                }
            }
            for (_, node, _) in probes.iter().filter(|p| p.0 == id) {
                t.probing.insert(*node);
            }
        }
        probes
    }

    /// A probe of `track` at `node` ended; `covers(dot)` says whether the replica's
    /// state covers the write (false when it failed).
    pub fn probed(&mut self, track: u64, node: NodeId, covers: impl Fn(Dot) -> bool, now_ms: u64) {
        let Some(t) = self.tracks.get_mut(&track) else { return };
        t.probing.remove(&node);
        if covers(t.dot) {
            self.applied(track, node, now_ms);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_is_sampled_when_its_last_missing_replica_holds_it() {
        let mut lag = LagTracker::default();
        let dot = Dot { actor: 1, counter: 1 };
        assert_eq!(lag.start(b"k", dot, 0, BTreeSet::new()), None, "on every replica at the ack");
        let t = lag.start(b"k", dot, 100, BTreeSet::from([2, 3])).unwrap();
        lag.applied(t, 2, 150);
        // Node 3 is asked once per round (not while a probe is out), and only when up.
        assert!(lag.probes(200, |n| n != 3).is_empty());
        assert_eq!(lag.probes(200 + PROBE_INTERVAL_MS, |_| true), vec![(t, 3, b"k".to_vec())]);
        assert!(lag.probes(200 + 2 * PROBE_INTERVAL_MS, |_| true).is_empty(), "a probe is out");
        lag.probed(t, 3, |_| false, 2500);
        lag.probed(t, 3, |d| d == dot, 3000);
        assert_eq!(lag.take_samples(), vec![0, 2900]);
        assert_eq!(lag.tracked(), 0);
    }

    #[test]
    fn tracking_is_bounded_in_count_and_age() {
        let mut lag = LagTracker::default();
        let dot = Dot { actor: 1, counter: 1 };
        for i in 0..TRACKED_MAX as u64 + 1 {
            lag.start(b"k", dot, i, BTreeSet::from([2]));
        }
        assert_eq!((lag.tracked(), lag.untracked), (TRACKED_MAX, 1));
        lag.probes(TRACK_MS_MAX + TRACKED_MAX as u64, |_| false);
        assert_eq!((lag.tracked(), lag.untracked), (0, TRACKED_MAX as u64 + 1));
    }
}
