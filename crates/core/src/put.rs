//! The write state machine: count acks from the replicas until W, failure, or the deadline.
//!
//! Driver contract: the coordinating replica first applies the write locally
//! ([`crate::replica::coordinate`]) and persists it, then creates a [`PutOp`]
//! (its own ack counted), sends the new state to every id in
//! [`PutOp::remote_targets`], feeds each answer to [`PutOp::on_ack`] /
//! [`PutOp::on_failure`], and calls [`PutOp::on_timeout`] once `now_ms` reaches
//! [`PutOp::deadline_ms`]. The first `Some` returned is the answer; later calls return `None`.

use qkv_proto::{Error, NodeId};

use crate::quorum::{Tally, tally};

/// One write in flight.
#[derive(Debug)]
pub struct PutOp {
    me: NodeId,
    needed: usize,
    targets: Vec<NodeId>,
    acked: Vec<NodeId>,
    failed: Vec<(NodeId, Error)>,
    deadline_ms: u64,
    done: bool,
    /// During a layout transition, a strict write's old home set: it must reach W of
    /// those too ([`crate::quorum::joint_tally`]). Empty otherwise.
    old_home: Vec<NodeId>,
    /// Targets that do not count toward W of the new set (old home replicas only).
    extra: Vec<NodeId>,
}

/// The nodes that acknowledged a successful write.
pub type PutOutcome = Result<Vec<NodeId>, Error>;

impl PutOp {
    /// A write to `targets` needing `needed` acks; the coordinator, `me`, has its copy.
    ///
    /// `me` is among the targets unless the layout moved between routing the write
    /// and placing it (a change committed while the local write was flushed): then
    /// its copy counts for nothing in the new home set (only, in a joint write, in the
    /// old one if it is there).
    pub fn new(me: NodeId, mut targets: Vec<NodeId>, needed: usize, now_ms: u64, timeout_ms: u64) -> Self {
        let mut extra = vec![];
        if !targets.contains(&me) {
            targets.push(me);
            extra.push(me);
        }
        PutOp {
            me,
            needed,
            targets,
            acked: vec![me],
            failed: vec![],
            deadline_ms: now_ms + timeout_ms,
            done: false,
            old_home: vec![],
            extra,
        }
    }

    /// Whether `node` is a target only as an old home replica.
    pub fn is_extra(&self, node: NodeId) -> bool {
        self.extra.contains(&node)
    }

    /// During a layout transition: also send to `old_home`'s members outside the
    /// targets, and (`strict`) need W of `old_home` as well as W of the new set.
    pub fn joint(&mut self, old_home: &[NodeId], strict: bool) {
        for &h in old_home {
            if !self.targets.contains(&h) {
                self.targets.push(h);
                self.extra.push(h);
            }
        }
        if strict {
            self.old_home = old_home.to_vec();
        }
    }

    /// The replicas the driver must send the new state to.
    pub fn remote_targets(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.targets.iter().copied().filter(move |&t| t != self.me)
    }

    /// When the driver must call [`PutOp::on_timeout`].
    pub fn deadline_ms(&self) -> u64 {
        self.deadline_ms
    }

    /// Ask one more replica (a stand-in replacing one that failed). Call before
    /// reporting the failure it replaces, so the op is not judged lost in between.
    pub fn add_target(&mut self, node: NodeId) {
        if !self.targets.contains(&node) {
            self.targets.push(node);
        }
    }

    /// Targets that have neither acked nor failed.
    pub fn pending_targets(&self) -> Vec<NodeId> {
        self.targets
            .iter()
            .copied()
            .filter(|t| !self.acked.contains(t) && !self.failed.iter().any(|f| f.0 == *t))
            .collect()
    }

    /// An answer that is already due (W = 1, or every target already answered).
    #[must_use]
    pub fn poll(&mut self) -> Option<PutOutcome> {
        self.decide()
    }

    /// A replica acknowledged the write durably.
    #[must_use]
    pub fn on_ack(&mut self, from: NodeId) -> Option<PutOutcome> {
        if self.targets.contains(&from) && !self.acked.contains(&from) && !self.failed.iter().any(|f| f.0 == from) {
            self.acked.push(from);
        }
        self.decide()
    }

    /// A replica failed or could not be reached.
    #[must_use]
    pub fn on_failure(&mut self, from: NodeId, err: Error) -> Option<PutOutcome> {
        if self.targets.contains(&from) && !self.acked.contains(&from) && !self.failed.iter().any(|f| f.0 == from) {
            self.failed.push((from, err));
        }
        self.decide()
    }

    /// The deadline passed.
    #[must_use]
    pub fn on_timeout(&mut self, now_ms: u64) -> Option<PutOutcome> {
        if self.done || now_ms < self.deadline_ms {
            return None;
        }
        self.done = true;
        Some(Err(Error::Timeout { acked: self.acked.len() as u32, needed: self.needed as u32, write: true }))
    }

    fn decide(&mut self) -> Option<PutOutcome> {
        if self.done {
            return None;
        }
        let failed: Vec<NodeId> = self.failed.iter().map(|f| f.0).collect();
        let decision = if self.old_home.is_empty() {
            let counts = |n: &NodeId| !self.extra.contains(n);
            let acked = self.acked.iter().filter(|n| counts(n)).count();
            let failed = failed.iter().filter(|n| counts(n)).count();
            tally(self.needed, acked, failed, self.targets.len() - self.extra.len())
        } else {
            let new: Vec<NodeId> = self.targets.iter().copied().filter(|t| !self.extra.contains(t)).collect();
            crate::quorum::joint_tally(self.needed, &self.old_home, &new, &self.acked, &failed)
        };
        match decision {
            Tally::Pending => None,
            Tally::Won => {
                self.done = true;
                Some(Ok(self.acked.clone()))
            }
            Tally::Lost => {
                self.done = true;
                Some(Err(Error::Failed {
                    acked: self.acked.len() as u32,
                    needed: self.needed as u32,
                    failed: self.failed.len() as u32,
                    cause: self.failed.first().map(|(n, e)| format!("node {n}: {e}")).unwrap_or_default(),
                    write: true,
                }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn w1_is_done_at_once() {
        let mut op = PutOp::new(1, vec![1, 2, 3], 1, 0, 1000);
        assert_eq!(op.poll(), Some(Ok(vec![1])));
        assert_eq!(op.on_ack(2), None, "answered only once");
    }

    #[test]
    fn quorum_waits_for_a_second_ack_and_ignores_duplicates() {
        let mut op = PutOp::new(1, vec![1, 2, 3], 2, 0, 1000);
        assert_eq!(op.poll(), None);
        assert_eq!(op.on_ack(1), None, "the coordinator's own ack counts once");
        assert_eq!(op.on_ack(9), None, "a stranger's ack does not count");
        assert_eq!(op.on_ack(3), Some(Ok(vec![1, 3])));
    }

    #[test]
    fn a_stand_in_added_before_a_failure_keeps_the_write_alive() {
        let mut op = PutOp::new(1, vec![1, 2, 3], 3, 0, 1000);
        op.add_target(4);
        assert_eq!(op.on_failure(2, Error::ShuttingDown), None, "node 4 may still make three");
        assert_eq!(op.on_ack(3), None);
        assert_eq!(op.on_ack(4), Some(Ok(vec![1, 3, 4])));
    }

    #[test]
    fn a_joint_write_needs_w_of_both_sets_and_a_sloppy_one_only_the_new() {
        // Range moving from {1, 2, 3} to {1, 3, 4}.
        let mut op = PutOp::new(1, vec![1, 3, 4], 2, 0, 1000);
        op.joint(&[1, 2, 3], true);
        assert_eq!(op.on_ack(4), None, "W of the new set, but only 1 of the old");
        assert_eq!(op.on_ack(2), Some(Ok(vec![1, 4, 2])));
        let mut op = PutOp::new(1, vec![1, 3, 4], 2, 0, 1000);
        op.joint(&[1, 2, 3], true);
        assert_eq!(op.on_failure(2, Error::ShuttingDown), None);
        assert!(matches!(op.on_failure(3, Error::ShuttingDown), Some(Err(_))), "the old set cannot make 2");
        let mut op = PutOp::new(1, vec![1, 3, 4], 2, 0, 1000);
        op.joint(&[1, 2, 3], false);
        assert_eq!(op.pending_targets(), vec![3, 4, 2], "the old replica still gets it");
        assert_eq!(op.on_ack(2), None, "an old-only replica does not count for a sloppy write");
        assert_eq!(op.on_ack(4), Some(Ok(vec![1, 2, 4])));
    }

    #[test]
    fn a_coordinator_the_layout_moved_away_from_counts_for_nothing() {
        let mut op = PutOp::new(1, vec![2, 3, 4], 2, 0, 1000);
        assert_eq!(op.on_ack(2), None, "node 1's own copy is not one of the two");
        assert_eq!(op.on_ack(3), Some(Ok(vec![1, 2, 3])));
        let mut op = PutOp::new(1, vec![2, 3, 4], 3, 0, 1000);
        assert_eq!(op.on_ack(2), None);
        assert_eq!(op.on_ack(3), None);
        assert!(matches!(op.on_failure(4, Error::ShuttingDown), Some(Err(_))), "three of {{2, 3, 4}} cannot be had");
    }

    #[test]
    fn failures_and_timeouts() {
        let mut op = PutOp::new(1, vec![1, 2, 3], 3, 0, 1000);
        assert!(matches!(op.on_failure(2, Error::Unreachable("x".into())), Some(Err(Error::Failed { .. }))));
        let mut op = PutOp::new(1, vec![1, 2, 3], 3, 0, 1000);
        assert_eq!(op.on_ack(2), None);
        assert_eq!(op.on_timeout(999), None);
        assert_eq!(op.on_timeout(1000), Some(Err(Error::Timeout { acked: 2, needed: 3, write: true })));
        assert_eq!(op.on_ack(3), None);
    }
}
