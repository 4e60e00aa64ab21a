//! Time to all replicas: how long after a write's ack the last of its home
//! replicas applied it, by replication, read repair or hinted handoff.
//!
//! At the ack the coordinator notes which home replicas still lack the write.
//! Late acks clear them; every second the coordinator asks (a bounded number of)
//! the others whether their state covers the write's dot yet. When none is
//! missing, the elapsed time is a sample for the driver to record.

use std::collections::{BTreeMap, BTreeSet};

use qkv_proto::{Dot, DvvSet, NodeId, Request, Response};

use super::{Core, Op, OpId, Store};

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
    pub(super) fn start(&mut self, key: &[u8], dot: Dot, now_ms: u64, missing: BTreeSet<NodeId>) -> Option<u64> {
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
    pub(super) fn applied(&mut self, track: u64, node: NodeId, now_ms: u64) {
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
}

impl<S: Store> Core<S> {
    /// Ask missing replicas that are up whether they hold their writes yet.
    pub(super) fn lag_round(&mut self) {
        if self.now_ms < self.lag.next_probe_ms {
            return;
        }
        self.lag.next_probe_ms = self.now_ms + PROBE_INTERVAL_MS;
        let now = self.now_ms;
        let before = self.lag.tracks.len();
        self.lag.tracks.retain(|_, t| now.saturating_sub(t.acked_ms) < TRACK_MS_MAX);
        self.lag.untracked += (before - self.lag.tracks.len()) as u64;
        let mut probes = vec![];
        for (&id, t) in &mut self.lag.tracks {
            for &node in &t.missing {
                if probes.len() < PROBES_PER_ROUND_MAX && !t.probing.contains(&node) && self.detector.is_up(node) {
                    probes.push((id, node, t.key.clone()));
                }
            }
            for (_, node, _) in probes.iter().filter(|p| p.0 == id) {
                t.probing.insert(*node);
            }
        }
        let timeout_ms = self.cfg.request_timeout_ms;
        for (track, node, key) in probes {
            let op = self.id();
            self.ops.insert(op, Op::LagProbe { track, node });
            self.send(op, node, Request::ReplicaGet { key }, timeout_ms);
        }
    }

    pub(super) fn lag_probe_response(&mut self, op_id: OpId, result: Result<Response, qkv_proto::Error>) {
        let Some(Op::LagProbe { track, node }) = self.ops.remove(&op_id) else { return };
        let Some(t) = self.lag.tracks.get_mut(&track) else { return };
        t.probing.remove(&node);
        let dot = t.dot;
        if let Ok(Response::ReplicaState(Some(s))) = result
            && DvvSet::clock(&s).covers(dot)
        {
            self.lag.applied(track, node, self.now_ms);
        }
    }
}
