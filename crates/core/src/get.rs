//! The read state machine: answer after R replies, then finish read repair.
//!
//! Driver contract: create a [`GetOp`], ask every id in [`GetOp::targets`] for
//! its state (the coordinator's own local read included), feed each answer to
//! [`GetOp::on_reply`] / [`GetOp::on_failure`], and call [`GetOp::on_timeout`]
//! at [`GetOp::deadline_ms`]. Carry out every returned [`GetAction`]; stop when
//! [`GetOp::is_finished`]. After the answer the op keeps collecting the
//! remaining replies (up to the deadline) so it can repair every replica that
//! answered with a state older than the merge.

use qkv_proto::{DvvSet, Error, NodeId};

use crate::quorum::{Tally, tally};

/// What the driver must do.
#[derive(Clone, Debug, PartialEq)]
pub enum GetAction {
    /// Answer the client: the merge of the replies so far.
    Reply(Result<GetAnswer, Error>),
    /// Read repair: send `set` to `to`, which answered with less.
    Repair {
        /// The stale replica.
        to: NodeId,
        /// The merged state to sync into it.
        set: DvvSet,
    },
}

/// A successful read.
#[derive(Clone, Debug, PartialEq)]
pub struct GetAnswer {
    /// The merge of the replies.
    pub set: DvvSet,
    /// How many replicas it merges.
    pub replied: usize,
}

/// One read in flight.
#[derive(Debug)]
pub struct GetOp {
    needed: usize,
    targets: Vec<NodeId>,
    replies: Vec<(NodeId, DvvSet)>,
    failed: Vec<(NodeId, Error)>,
    deadline_ms: u64,
    answered: bool,
    finished: bool,
}

impl GetOp {
    /// A read of `targets` needing `needed` replies.
    pub fn new(targets: Vec<NodeId>, needed: usize, now_ms: u64, timeout_ms: u64) -> Self {
        GetOp {
            needed,
            targets,
            replies: vec![],
            failed: vec![],
            deadline_ms: now_ms + timeout_ms,
            answered: false,
            finished: false,
        }
    }

    /// The replicas to ask.
    pub fn targets(&self) -> &[NodeId] {
        &self.targets
    }

    /// When the driver must call [`GetOp::on_timeout`].
    pub fn deadline_ms(&self) -> u64 {
        self.deadline_ms
    }

    /// True once the answer is sent and read repair is planned.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// A replica's state (`None`: it never saw the key).
    #[must_use]
    pub fn on_reply(&mut self, from: NodeId, state: Option<DvvSet>) -> Vec<GetAction> {
        if self.is_new(from) {
            self.replies.push((from, state.unwrap_or_default()));
        }
        self.step()
    }

    /// A replica failed or could not be reached.
    #[must_use]
    pub fn on_failure(&mut self, from: NodeId, err: Error) -> Vec<GetAction> {
        if self.is_new(from) {
            self.failed.push((from, err));
        }
        self.step()
    }

    /// The deadline passed: answer with a timeout if still unanswered, and repair what replied.
    #[must_use]
    pub fn on_timeout(&mut self, now_ms: u64) -> Vec<GetAction> {
        if self.finished || now_ms < self.deadline_ms {
            return vec![];
        }
        let mut out = vec![];
        if !self.answered {
            self.answered = true;
            out.push(GetAction::Reply(Err(Error::Timeout {
                acked: self.replies.len() as u32,
                needed: self.needed as u32,
                write: false,
            })));
        }
        out.extend(self.finish());
        out
    }

    fn is_new(&self, from: NodeId) -> bool {
        !self.finished
            && self.targets.contains(&from)
            && !self.replies.iter().any(|r| r.0 == from)
            && !self.failed.iter().any(|f| f.0 == from)
    }

    fn merged(&self) -> DvvSet {
        self.replies.iter().fold(DvvSet::new(), |acc, (_, s)| acc.merged(s))
    }

    fn step(&mut self) -> Vec<GetAction> {
        if self.finished {
            return vec![];
        }
        let mut out = vec![];
        if !self.answered {
            match tally(self.needed, self.replies.len(), self.failed.len(), self.targets.len()) {
                Tally::Pending => {}
                Tally::Won => {
                    self.answered = true;
                    out.push(GetAction::Reply(Ok(GetAnswer { set: self.merged(), replied: self.replies.len() })));
                }
                Tally::Lost => {
                    self.answered = true;
                    out.push(GetAction::Reply(Err(Error::Failed {
                        acked: self.replies.len() as u32,
                        needed: self.needed as u32,
                        failed: self.failed.len() as u32,
                        cause: self.failed.first().map(|(n, e)| format!("node {n}: {e}")).unwrap_or_default(),
                        write: false,
                    })));
                }
            }
        }
        if self.replies.len() + self.failed.len() == self.targets.len() {
            out.extend(self.finish());
        }
        out
    }

    /// Plan read repair: every replica whose reply does not cover the merge gets the merge.
    fn finish(&mut self) -> Vec<GetAction> {
        self.finished = true;
        let merged = self.merged();
        self.replies
            .iter()
            .filter(|(_, s)| !s.covers(&merged))
            .map(|(to, _)| GetAction::Repair { to: *to, set: merged.clone() })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qkv_proto::VersionVector;

    fn set(v: &[u8], actor: NodeId) -> DvvSet {
        let mut s = DvvSet::new();
        s.update(&VersionVector::new(), Some(v.to_vec()), u64::from(actor));
        s
    }

    #[test]
    fn answers_at_r_then_repairs_the_stale_replica() {
        let fresh = set(b"v", 1);
        let mut op = GetOp::new(vec![1, 2, 3], 2, 0, 1000);
        assert!(op.on_reply(1, Some(fresh.clone())).is_empty());
        let a = op.on_reply(2, Some(fresh.clone()));
        assert_eq!(a, vec![GetAction::Reply(Ok(GetAnswer { set: fresh.clone(), replied: 2 }))]);
        assert!(!op.is_finished());
        let a = op.on_reply(3, None);
        assert_eq!(a, vec![GetAction::Repair { to: 3, set: fresh }]);
        assert!(op.is_finished());
    }

    #[test]
    fn divergent_replies_are_merged_and_both_sides_repaired() {
        let (a, b) = (set(b"a", 1), set(b"b", 2));
        let mut op = GetOp::new(vec![1, 2], 2, 0, 1000);
        assert!(op.on_reply(1, Some(a.clone())).is_empty());
        let acts = op.on_reply(2, Some(b.clone()));
        let merged = a.merged(&b);
        assert_eq!(acts.len(), 3);
        assert_eq!(acts[0], GetAction::Reply(Ok(GetAnswer { set: merged.clone(), replied: 2 })));
        assert!(acts.contains(&GetAction::Repair { to: 1, set: merged.clone() }));
        assert!(acts.contains(&GetAction::Repair { to: 2, set: merged }));
    }

    #[test]
    fn timeout_before_r_is_an_error_and_still_repairs() {
        let mut op = GetOp::new(vec![1, 2, 3], 3, 0, 1000);
        assert!(op.on_reply(1, Some(set(b"x", 1))).is_empty());
        assert!(op.on_reply(2, None).is_empty());
        let acts = op.on_timeout(1000);
        assert_eq!(acts[0], GetAction::Reply(Err(Error::Timeout { acked: 2, needed: 3, write: false })));
        assert!(matches!(acts[1], GetAction::Repair { to: 2, .. }));
        assert!(op.is_finished());
        assert!(op.on_reply(3, None).is_empty());
    }

    #[test]
    fn failures_make_r_unreachable() {
        let mut op = GetOp::new(vec![1, 2, 3], 2, 0, 1000);
        assert!(op.on_failure(1, Error::ShuttingDown).is_empty());
        let acts = op.on_failure(2, Error::ShuttingDown);
        assert!(matches!(acts[0], GetAction::Reply(Err(Error::Failed { .. }))));
    }
}
