//! The inspect state machine: what each home replica of a key holds and which
//! hints the stand-ins hold for it, gathered for `qkv inspect`. It answers once
//! every node asked has answered, or at its deadline with what it has (the slots
//! still empty say why).

use std::collections::BTreeSet;

use qkv_proto::{DvvSet, Error, InspectReply, NodeId, Response};

/// One replica's raw state of a key, or why it could not be read.
pub type ReplicaRead = Result<Option<DvvSet>, Error>;

/// See the module docs.
#[derive(Debug)]
pub struct InspectOp {
    /// Each home replica, and its answer once it came.
    slots: Vec<(NodeId, Option<ReplicaRead>)>,
    /// Stand-ins asked for their hints and not answered yet.
    stand_ins: BTreeSet<NodeId>,
    /// (holder, owner, state, age ms) of every hint found.
    hints: Vec<(NodeId, NodeId, DvvSet, u64)>,
}

impl InspectOp {
    /// An inspect of the key with home replicas `home` and stand-ins `stand_ins`,
    /// run by node `me` with its own state of the key (`local`, when it is a home
    /// replica) and the hints it holds for it: (owner, state, age ms).
    pub fn new(
        me: NodeId,
        home: &[NodeId],
        stand_ins: &[NodeId],
        local: impl FnOnce() -> ReplicaRead,
        local_hints: Vec<(NodeId, DvvSet, u64)>,
    ) -> InspectOp {
        let mut local = Some(local);
        let slots = home.iter().map(|&id| (id, (id == me).then(|| local.take().map_or(Ok(None), |f| f())))).collect();
        InspectOp {
            slots,
            stand_ins: stand_ins.iter().copied().filter(|&id| id != me).collect(),
            hints: local_hints.into_iter().map(|(owner, set, age)| (me, owner, set, age)).collect(),
        }
    }

    /// The home replicas to ask for their state (all but `me`).
    pub fn replicas_to_ask(&self, me: NodeId) -> Vec<NodeId> {
        self.slots.iter().map(|s| s.0).filter(|&id| id != me).collect()
    }

    /// The stand-ins to ask for their hints.
    pub fn stand_ins_to_ask(&self) -> Vec<NodeId> {
        self.stand_ins.iter().copied().collect()
    }

    /// An answer from `from` (or the error its request ended with).
    pub fn on_answer(&mut self, from: NodeId, result: Result<Response, Error>) {
        if self.stand_ins.remove(&from) {
            // A stand-in's answer (a failure: it could not say what it holds).
            // Only valid states: a peer's broken one is dropped here, not passed on.
            if let Ok(Response::Hints(held)) = result {
                self.hints.extend(
                    held.into_iter().filter(|h| h.1.is_valid()).map(|(owner, set, age)| (from, owner, set, age)),
                );
            }
        } else if let Some(slot) = self.slots.iter_mut().find(|s| s.0 == from && s.1.is_none()) {
            slot.1 = Some(result.and_then(|r| match r {
                Response::ReplicaState(s) if s.as_ref().is_none_or(DvvSet::is_valid) => Ok(s),
                r => Err(Error::Protocol(format!("node {from} sent an unexpected answer: {r:?}"))),
            }));
        }
    }

    /// The deadline passed: the slots still empty say so, and no stand-in is awaited.
    pub fn expire(&mut self) {
        for slot in self.slots.iter_mut().filter(|s| s.1.is_none()) {
            slot.1 = Some(Err(Error::Unreachable(format!("node {} did not answer in time", slot.0))));
        }
        self.stand_ins.clear();
    }

    /// Every node asked has answered (or the deadline passed).
    pub fn is_done(&self) -> bool {
        self.stand_ins.is_empty() && self.slots.iter().all(|s| s.1.is_some())
    }

    /// The answer.
    pub fn reply(self) -> InspectReply {
        let replicas = self
            .slots
            .into_iter()
            .map(|(id, r)| (id, r.unwrap_or_else(|| Err(Error::Unreachable(format!("node {id} did not answer"))))))
            .collect();
        InspectReply { replicas, hints: self.hints }
    }
}

#[cfg(test)]
mod tests {
    use qkv_proto::VersionVector;

    use super::*;

    fn state(v: &[u8]) -> DvvSet {
        let mut s = DvvSet::new();
        s.update(&VersionVector::new(), Some(v.to_vec()), 1);
        s
    }

    #[test]
    fn answers_once_every_replica_and_stand_in_did_and_names_a_wrong_answer() {
        let mut op = InspectOp::new(1, &[1, 2, 3], &[4, 5], || Ok(Some(state(b"mine"))), vec![]);
        assert_eq!((op.replicas_to_ask(1), op.stand_ins_to_ask()), (vec![2, 3], vec![4, 5]));
        op.on_answer(2, Ok(Response::ReplicaState(None)));
        op.on_answer(3, Ok(Response::ReplicaAck));
        op.on_answer(4, Ok(Response::Hints(vec![(2, state(b"hinted"), 10)])));
        assert!(!op.is_done(), "stand-in 5 has not answered");
        op.on_answer(5, Err(Error::Unreachable("down".into())));
        assert!(op.is_done());
        let r = op.reply();
        assert!(matches!(&r.replicas[0], (1, Ok(Some(_)))));
        assert!(matches!(&r.replicas[1], (2, Ok(None))));
        assert!(matches!(&r.replicas[2], (3, Err(Error::Protocol(_)))), "{:?}", r.replicas[2]);
        assert_eq!(r.hints.len(), 1);
        assert_eq!((r.hints[0].0, r.hints[0].1), (4, 2));
    }

    #[test]
    fn at_its_deadline_it_answers_with_what_it_has() {
        let mut op = InspectOp::new(9, &[1, 2], &[3], || unreachable!("not a home replica"), vec![(1, state(b"h"), 5)]);
        op.on_answer(1, Ok(Response::ReplicaState(Some(state(b"v")))));
        assert!(!op.is_done());
        op.expire();
        assert!(op.is_done());
        let r = op.reply();
        assert!(matches!(&r.replicas[1], (2, Err(Error::Unreachable(m))) if m.contains("in time")));
        assert_eq!(r.hints[0].0, 9, "this node's own hints count");
    }
}
