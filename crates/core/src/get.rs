//! The read state machine: ask R replicas, answer after R replies, then finish
//! read repair.
//!
//! Driver contract: create a [`GetOp`] and carry out the actions of
//! [`GetOp::start`]; feed each answer to [`GetOp::on_reply`], [`GetOp::on_digest`]
//! or [`GetOp::on_failure`], and call [`GetOp::on_timeout`] at
//! [`GetOp::next_wakeup_ms`]. Carry out every returned [`GetAction`]; stop when
//! [`GetOp::is_finished`].
//!
//! A read asks R of its targets for their states (the coordinator's own first, when
//! it is one), not all of them: an R = one read is one local lookup. A target that
//! fails, or that has not answered after the hedge delay, is replaced by the next
//! one. A *checked* read (a sample of reads; see the router) also asks the targets
//! it did not ask for the digest of their state, after the answer's fashion of not
//! waiting: a digest that differs from the merge fetches that replica's state, and
//! read repair then covers it too. Every replica whose state does not cover the
//! merge of what the read gathered is repaired; unchecked reads repair only among
//! the replicas they asked, and anti-entropy does the rest.

use qkv_proto::{DvvSet, Error, NodeId, Seen};

use crate::merkle::digest;

/// What the driver must do.
#[derive(Clone, Debug, PartialEq)]
pub enum GetAction {
    /// Answer the client: the merge of the replies so far.
    Reply(Result<GetAnswer, Error>),
    /// Ask `to` for its state of the key (the coordinator's own read included).
    Ask {
        /// The replica.
        to: NodeId,
    },
    /// Ask `to` for the digest of its state of the key only (a checked read).
    AskDigest {
        /// The replica.
        to: NodeId,
    },
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

/// How a checked read's digests compared, once it finished.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CheckOutcome {
    /// Digests that came back.
    pub compared: usize,
    /// Of them, those that differed from the merge (their replica was fetched).
    pub differed: usize,
}

/// One read in flight.
#[derive(Debug)]
pub struct GetOp {
    key: Vec<u8>,
    needed: usize,
    targets: Vec<NodeId>,
    /// Targets asked for their states, in order.
    asked: Vec<NodeId>,
    /// Targets asked for a digest only.
    digest_asked: Vec<NodeId>,
    replies: Vec<(NodeId, DvvSet)>,
    failed: Vec<(NodeId, Error)>,
    digests: Vec<(NodeId, u64)>,
    digest_failed: Vec<NodeId>,
    differed: usize,
    deadline_ms: u64,
    hedge_ms: u64,
    /// When to ask one more target if the answer has not come (`None`: no more hedges).
    hedge_at_ms: Option<u64>,
    answered: bool,
    finished: bool,
    /// A session read: what the answer must be at least as new as, and whether an
    /// answer with no value is (see `SessionFloor`).
    floor: Option<(Seen, bool)>,
}

/// How long a read waits for the replicas it asked before it also asks the next
/// target: a twentieth of its deadline, at most 50 ms (a replica that stopped
/// answering costs a read that much, not its whole deadline).
pub fn hedge_ms(timeout_ms: u64) -> u64 {
    (timeout_ms / 20).clamp(1, 50)
}

impl GetOp {
    /// A read of `key` needing `needed` of `targets` (the first asked first); `check`:
    /// also compare the digests of the targets it does not ask.
    pub fn new(key: &[u8], targets: Vec<NodeId>, needed: usize, now_ms: u64, timeout_ms: u64, check: bool) -> Self {
        let hedge_ms = hedge_ms(timeout_ms);
        let mut op = GetOp {
            key: key.to_vec(),
            needed,
            targets,
            asked: vec![],
            digest_asked: vec![],
            replies: vec![],
            failed: vec![],
            digests: vec![],
            digest_failed: vec![],
            differed: 0,
            deadline_ms: now_ms + timeout_ms,
            hedge_ms,
            hedge_at_ms: None,
            answered: false,
            finished: false,
            floor: None,
        };
        if check {
            op.digest_asked = op.targets.iter().skip(needed).copied().collect();
        }
        op
    }

    /// Make this a session read: it answers only with a merge at least as new as
    /// `seen` (or, `deleted`, one with no value), asking the targets past R when the
    /// first R answers are older, and failing with [`Error::Behind`] when no target is.
    pub fn with_floor(mut self, seen: Seen, deleted: bool) -> Self {
        self.floor = Some((seen, deleted));
        self
    }

    /// True when the answers so far are as new as the session needs (always, outside one).
    fn fresh(&self) -> bool {
        let Some((seen, deleted)) = &self.floor else { return true };
        let merged = self.merged();
        (*deleted && merged.is_deleted()) || merged.seen().covers_all(seen)
    }

    /// The first requests: the state of the first R targets, and the digests of the
    /// others in a checked read.
    #[must_use]
    pub fn start(&mut self, now_ms: u64) -> Vec<GetAction> {
        let first: Vec<NodeId> = self.targets.iter().take(self.needed).copied().collect();
        let mut out: Vec<GetAction> = first.into_iter().map(|to| self.ask(to)).collect();
        out.extend(self.digest_asked.iter().map(|&to| GetAction::AskDigest { to }));
        if self.hedge_target().is_some() {
            self.hedge_at_ms = Some(now_ms + self.hedge_ms);
        }
        out
    }

    /// The key read.
    pub fn key(&self) -> &[u8] {
        &self.key
    }

    /// Every target (for tests and placement checks).
    pub fn targets(&self) -> &[NodeId] {
        &self.targets
    }

    /// The replicas asked for their states so far.
    pub fn asked(&self) -> &[NodeId] {
        &self.asked
    }

    /// The read's deadline.
    pub fn deadline_ms(&self) -> u64 {
        self.deadline_ms
    }

    /// When the driver must call [`GetOp::on_timeout`] next.
    pub fn next_wakeup_ms(&self) -> u64 {
        match self.hedge_at_ms {
            Some(h) if !self.answered => h.min(self.deadline_ms),
            _ => self.deadline_ms,
        }
    }

    /// True once the answer is sent and read repair is planned.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// A checked read's digests, once finished (`None`: not a checked read).
    pub fn check_outcome(&self) -> Option<CheckOutcome> {
        (!self.digest_asked.is_empty())
            .then_some(CheckOutcome { compared: self.digests.len(), differed: self.differed })
    }

    fn ask(&mut self, to: NodeId) -> GetAction {
        self.asked.push(to);
        GetAction::Ask { to }
    }

    /// The next target to ask for its state: one asked nothing yet, else one whose
    /// digest came back. Never one whose digest is still out (each target has at most
    /// one request of a read out, so an answer or failure says what it is about), nor
    /// one that failed.
    fn spare(&self) -> Option<NodeId> {
        let failed = |n: NodeId| self.failed.iter().any(|f| f.0 == n) || self.digest_failed.contains(&n);
        let digest_in = |n: NodeId| self.digests.iter().any(|d| d.0 == n);
        let mut rest = self.targets.iter().copied().filter(|&n| !self.asked.contains(&n) && !failed(n));
        let fresh = rest.clone().find(|n| !self.digest_asked.contains(n));
        fresh.or_else(|| rest.find(|&n| digest_in(n)))
    }

    /// Whom the hedge asks: a [`GetOp::spare`], else a target whose digest is still out
    /// (a checked read's other targets all are): it then has two requests of this read
    /// out, and a failure from it fails both (see [`GetOp::on_failure`]).
    fn hedge_target(&self) -> Option<NodeId> {
        self.spare().or_else(|| {
            let failed = |n: NodeId| self.failed.iter().any(|f| f.0 == n) || self.digest_failed.contains(&n);
            self.targets.iter().copied().find(|&n| {
                !self.asked.contains(&n)
                    && !failed(n)
                    && self.digest_asked.contains(&n)
                    && !self.digests.iter().any(|d| d.0 == n)
            })
        })
    }

    /// State requests out (asked, neither answered nor failed).
    fn outstanding(&self) -> usize {
        self.asked.len() - self.replies.len() - self.failed.len()
    }

    /// Targets that may still be asked for their state (or are being asked).
    fn possible(&self) -> usize {
        let failed = |n: NodeId| self.failed.iter().any(|f| f.0 == n) || self.digest_failed.contains(&n);
        self.targets.iter().filter(|&&n| !self.asked.contains(&n) && !failed(n)).count() + self.outstanding()
    }

    /// A replica's state (`None`: it never saw the key).
    #[must_use]
    pub fn on_reply(&mut self, from: NodeId, state: Option<DvvSet>) -> Vec<GetAction> {
        if self.is_new(from) {
            self.replies.push((from, state.unwrap_or_default()));
        }
        self.step()
    }

    /// A replica's digest of its state (a checked read).
    #[must_use]
    pub fn on_digest(&mut self, from: NodeId, d: u64) -> Vec<GetAction> {
        if !self.finished
            && self.digest_asked.contains(&from)
            && !self.digests.iter().any(|x| x.0 == from)
            && !self.digest_failed.contains(&from)
        {
            self.digests.push((from, d));
        }
        self.step()
    }

    /// A replica failed or could not be reached (for its state or its digest).
    #[must_use]
    pub fn on_failure(&mut self, from: NodeId, err: Error) -> Vec<GetAction> {
        let mut out = vec![];
        let digest_out = self.digest_asked.contains(&from)
            && !self.digests.iter().any(|x| x.0 == from)
            && !self.digest_failed.contains(&from);
        if self.is_new(from) {
            // (A hedge may have asked a target whose digest was out: which request
            // failed is unknown, so both did.)
            if digest_out {
                self.digest_failed.push(from);
            }
            self.failed.push((from, err));
        } else if !self.finished
            && self.digest_asked.contains(&from)
            && !self.digests.iter().any(|x| x.0 == from)
            && !self.digest_failed.contains(&from)
        {
            self.digest_failed.push(from);
        }
        out.extend(self.step());
        out
    }

    /// Time passed: past the hedge delay ask one more target; past the deadline answer
    /// with a timeout if still unanswered, and repair what replied.
    #[must_use]
    pub fn on_timeout(&mut self, now_ms: u64) -> Vec<GetAction> {
        if self.finished {
            return vec![];
        }
        if now_ms < self.deadline_ms {
            let mut out = vec![];
            if let Some(h) = self.hedge_at_ms
                && now_ms >= h
                && !self.answered
            {
                self.hedge_at_ms = None;
                if let Some(to) = self.hedge_target() {
                    out.push(self.ask(to));
                    if self.hedge_target().is_some() {
                        self.hedge_at_ms = Some(now_ms + self.hedge_ms);
                    }
                }
            }
            return out;
        }
        let mut out = vec![];
        if !self.answered {
            self.answered = true;
            // Enough answers, all older than the session: say so, not "timeout".
            let answer = if self.replies.len() >= self.needed {
                Error::Behind { asked: self.replies.len() as u32 }
            } else {
                Error::Timeout { acked: self.replies.len() as u32, needed: self.needed as u32, write: false }
            };
            out.push(GetAction::Reply(Err(answer)));
        }
        out.extend(self.finish());
        out
    }

    fn is_new(&self, from: NodeId) -> bool {
        !self.finished
            && self.asked.contains(&from)
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
            // Keep R requests in play: a failed one is replaced by the next target (one
            // whose digest is out is asked once the digest is in).
            while self.replies.len() + self.outstanding() < self.needed {
                let Some(to) = self.spare() else { break };
                out.push(self.ask(to));
            }
            let enough = self.replies.len() >= self.needed;
            let fresh = !enough || self.fresh();
            if enough && !fresh {
                // A session read whose answers are older than the session: ask every
                // other target (the first that has caught up ends it).
                while let Some(to) = self.spare() {
                    out.push(self.ask(to));
                }
            }
            let answer = if enough && fresh {
                Some(Ok(GetAnswer { set: self.merged(), replied: self.replies.len() }))
            } else if enough && self.possible() == 0 {
                Some(Err(Error::Behind { asked: self.replies.len() as u32 }))
            } else if self.replies.len() + self.possible() < self.needed {
                Some(Err(Error::Failed {
                    acked: self.replies.len() as u32,
                    needed: self.needed as u32,
                    failed: self.failed.len() as u32,
                    cause: self.failed.first().map(|(n, e)| format!("node {n}: {e}")).unwrap_or_default(),
                    write: false,
                }))
            } else {
                None
            };
            if let Some(answer) = answer {
                self.answered = true;
                out.push(GetAction::Reply(answer));
            }
        }
        let states_in = self.replies.len() + self.failed.len() == self.asked.len();
        let digests_in = self.digests.len() + self.digest_failed.len() == self.digest_asked.len();
        if self.answered && states_in && digests_in {
            // A digest that is no state the read holds: fetch that replica's state, so
            // the repair covers it (and what it held reaches the others). A digest of a
            // state it holds stands for that state.
            let known: Vec<u64> = self.replies.iter().map(|(_, s)| digest(&self.key, s)).collect();
            let unknown: Vec<NodeId> = self
                .digests
                .iter()
                .filter(|(n, d)| !known.contains(d) && !self.asked.contains(n))
                .map(|(n, _)| *n)
                .collect();
            if unknown.is_empty() {
                out.extend(self.finish());
            } else {
                self.differed += unknown.len();
                out.extend(unknown.into_iter().map(|to| self.ask(to)));
            }
        }
        out
    }

    /// Plan read repair: every replica whose state does not cover the merge gets the
    /// merge (those that sent a digest of a state the read holds included).
    fn finish(&mut self) -> Vec<GetAction> {
        self.finished = true;
        let merged = self.merged();
        let mut stale: Vec<NodeId> =
            self.replies.iter().filter(|(_, s)| !s.covers(&merged)).map(|(to, _)| *to).collect();
        for (n, d) in &self.digests {
            if self.asked.contains(n) {
                continue;
            }
            let held = self.replies.iter().find(|(_, s)| digest(&self.key, s) == *d);
            if held.is_some_and(|(_, s)| !s.covers(&merged)) {
                stale.push(*n);
            }
        }
        stale.into_iter().map(|to| GetAction::Repair { to, set: merged.clone() }).collect()
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

    fn asks(actions: &[GetAction]) -> Vec<NodeId> {
        actions.iter().filter_map(|a| if let GetAction::Ask { to } = a { Some(*to) } else { None }).collect()
    }

    #[test]
    fn r_one_asks_one_replica_and_answers_from_it() {
        let mut op = GetOp::new(b"k", vec![1, 2, 3], 1, 0, 1000, false);
        assert_eq!(op.start(0), vec![GetAction::Ask { to: 1 }]);
        let a = op.on_reply(1, Some(set(b"v", 1)));
        assert_eq!(a, vec![GetAction::Reply(Ok(GetAnswer { set: set(b"v", 1), replied: 1 }))]);
        assert!(op.is_finished(), "nothing else was asked");
        assert_eq!(op.check_outcome(), None);
    }

    #[test]
    fn a_session_read_asks_past_r_until_a_replica_is_as_new_as_the_session() {
        let old = set(b"old", 1);
        let mut new = old.clone();
        new.update(old.clock(), Some(b"new".to_vec()), 2);
        let floor = new.seen();
        let mut op = GetOp::new(b"k", vec![1, 2, 3], 1, 0, 1000, false).with_floor(floor.clone(), false);
        assert_eq!(asks(&op.start(0)), vec![1]);
        // The first answer is older than the session: the others are asked, nothing answered.
        let a = op.on_reply(1, Some(old.clone()));
        assert_eq!(asks(&a), vec![2, 3]);
        assert!(!a.iter().any(|x| matches!(x, GetAction::Reply(_))));
        // A replica that caught up answers; the stale one is repaired once all are in.
        let a = op.on_reply(3, Some(new.clone()));
        assert!(a.contains(&GetAction::Reply(Ok(GetAnswer { set: new.clone(), replied: 2 }))), "{a:?}");
        let a = op.on_reply(2, Some(old.clone()));
        assert!(a.contains(&GetAction::Repair { to: 1, set: new.clone() }), "{a:?}");

        // No replica has caught up: `Behind`, never the older state.
        let mut op = GetOp::new(b"k", vec![1, 2, 3], 1, 0, 1000, false).with_floor(floor.clone(), false);
        let _ = op.start(0);
        let _ = op.on_reply(1, Some(old.clone()));
        let _ = op.on_failure(2, Error::Unreachable("down".into()));
        let a = op.on_reply(3, None);
        assert_eq!(a.first(), Some(&GetAction::Reply(Err(Error::Behind { asked: 2 }))), "{a:?}");

        // A session that last saw the key deleted takes an answer with no value.
        let mut op = GetOp::new(b"k", vec![1, 2, 3], 1, 0, 1000, false).with_floor(floor, true);
        let _ = op.start(0);
        let a = op.on_reply(1, None);
        assert_eq!(a.first(), Some(&GetAction::Reply(Ok(GetAnswer { set: DvvSet::new(), replied: 1 }))), "{a:?}");
    }

    #[test]
    fn answers_at_r_then_repairs_the_stale_replica() {
        let fresh = set(b"v", 1);
        let mut op = GetOp::new(b"k", vec![1, 2, 3], 3, 0, 1000, false);
        assert_eq!(asks(&op.start(0)), vec![1, 2, 3]);
        assert!(op.on_reply(1, Some(fresh.clone())).is_empty());
        assert!(op.on_reply(2, Some(fresh.clone())).is_empty());
        let a = op.on_reply(3, None);
        assert_eq!(a[0], GetAction::Reply(Ok(GetAnswer { set: fresh.clone(), replied: 3 })));
        assert_eq!(a[1], GetAction::Repair { to: 3, set: fresh });
        assert!(op.is_finished());
    }

    #[test]
    fn a_failed_replica_is_replaced_by_the_next_target() {
        let mut op = GetOp::new(b"k", vec![1, 2, 3], 2, 0, 1000, false);
        assert_eq!(asks(&op.start(0)), vec![1, 2]);
        assert!(op.on_reply(1, None).is_empty());
        let a = op.on_failure(2, Error::ShuttingDown);
        assert_eq!(a, vec![GetAction::Ask { to: 3 }]);
        let a = op.on_reply(3, None);
        assert!(matches!(a[0], GetAction::Reply(Ok(GetAnswer { replied: 2, .. }))));
    }

    #[test]
    fn a_slow_replica_is_hedged_after_the_delay() {
        let mut op = GetOp::new(b"k", vec![1, 2, 3], 1, 0, 1000, false);
        assert_eq!(asks(&op.start(0)), vec![1]);
        assert_eq!(op.next_wakeup_ms(), 50);
        assert!(op.on_timeout(49).is_empty());
        assert_eq!(op.on_timeout(50), vec![GetAction::Ask { to: 2 }]);
        assert_eq!(op.next_wakeup_ms(), 100);
        let a = op.on_reply(2, Some(set(b"v", 2)));
        assert!(matches!(a[0], GetAction::Reply(Ok(_))));
        // The slow one still counts for repair when it answers.
        assert!(!op.is_finished());
        let a = op.on_reply(1, None);
        assert_eq!(a, vec![GetAction::Repair { to: 1, set: set(b"v", 2) }]);
    }

    #[test]
    fn a_checked_read_fetches_a_replica_whose_digest_differs_and_repairs_everyone() {
        let (a, b) = (set(b"a", 1), set(b"b", 2));
        let mut op = GetOp::new(b"k", vec![1, 2, 3], 1, 0, 1000, true);
        let first = op.start(0);
        assert_eq!(
            first,
            vec![GetAction::Ask { to: 1 }, GetAction::AskDigest { to: 2 }, GetAction::AskDigest { to: 3 }]
        );
        let acts = op.on_reply(1, Some(a.clone()));
        assert_eq!(acts, vec![GetAction::Reply(Ok(GetAnswer { set: a.clone(), replied: 1 }))], "no wait for digests");
        assert!(op.on_digest(2, digest(b"k", &a)).is_empty(), "2 holds what 1 answered");
        assert_eq!(op.on_digest(3, digest(b"k", &b)), vec![GetAction::Ask { to: 3 }], "3 differs: fetched");
        let acts = op.on_reply(3, Some(b.clone()));
        let merged = a.merged(&b);
        let repaired = |to| GetAction::Repair { to, set: merged.clone() };
        assert_eq!(acts, vec![repaired(1), repaired(3), repaired(2)], "2 held `a`: it gets the merge too");
        assert!(op.is_finished());
        assert_eq!(op.check_outcome(), Some(CheckOutcome { compared: 2, differed: 1 }));
    }

    #[test]
    fn timeout_before_r_is_an_error_and_still_repairs() {
        let mut op = GetOp::new(b"k", vec![1, 2, 3], 3, 0, 1000, false);
        let _ = op.start(0);
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
        let mut op = GetOp::new(b"k", vec![1, 2, 3], 2, 0, 1000, false);
        let _ = op.start(0);
        assert_eq!(op.on_failure(1, Error::ShuttingDown), vec![GetAction::Ask { to: 3 }]);
        let acts = op.on_failure(2, Error::ShuttingDown);
        assert!(matches!(acts[0], GetAction::Reply(Err(Error::Failed { .. }))));
    }

    /// A checked read keeps a target's state and digest requests apart: a digest that
    /// fails is not a failed replica, and a target whose digest is out is asked for its
    /// state only once the digest is in.
    #[test]
    fn a_failed_digest_is_not_a_failed_replica() {
        let mut op = GetOp::new(b"k", vec![1, 2, 3], 2, 0, 1000, true);
        let first = op.start(0);
        assert_eq!(first, vec![GetAction::Ask { to: 1 }, GetAction::Ask { to: 2 }, GetAction::AskDigest { to: 3 }]);
        assert!(op.on_reply(1, None).is_empty());
        assert!(op.on_failure(2, Error::ShuttingDown).is_empty(), "3 may still make two once its digest is in");
        assert_eq!(op.on_digest(3, 7), vec![GetAction::Ask { to: 3 }]);
        let acts = op.on_reply(3, None);
        assert!(matches!(acts[0], GetAction::Reply(Ok(GetAnswer { replied: 2, .. }))), "{acts:?}");
        // The other way: the digest fails, and that is not the replica's state failing.
        let mut op = GetOp::new(b"k", vec![1, 2, 3], 2, 0, 1000, true);
        let _ = op.start(0);
        assert!(op.on_failure(3, Error::ShuttingDown).is_empty());
        assert!(op.on_reply(1, None).is_empty());
        assert!(matches!(op.on_reply(2, None)[0], GetAction::Reply(Ok(_))));
        // A checked read still hedges: to a target whose digest is out, whose failure
        // then fails both its requests.
        let mut op = GetOp::new(b"k", vec![1, 2, 3], 1, 0, 1000, true);
        let _ = op.start(0);
        assert_eq!(op.next_wakeup_ms(), 50);
        assert_eq!(op.on_timeout(50), vec![GetAction::Ask { to: 2 }], "the slow 1 hedged to 2");
        let acts = op.on_reply(2, Some(DvvSet::new()));
        assert!(matches!(acts[0], GetAction::Reply(Ok(_))), "{acts:?}");
        assert!(op.on_failure(3, Error::ShuttingDown).is_empty());
        assert_eq!(op.on_digest(2, 1), vec![], "2's digest still counts");
        assert!(!op.is_finished(), "1 is still out");
        let acts = op.on_failure(1, Error::ShuttingDown);
        assert!(op.is_finished(), "{acts:?}");
    }
}
