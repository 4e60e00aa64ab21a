//! The router's side of [`crate::handoff`]: lend it the node for a round or an
//! answer, and send the batches it makes.

use qkv_proto::{Error, NodeId, Response};

use super::{Core, HANDOFF_TIMEOUT_MS, Op, OpId, Store};
use crate::handoff::Env;

impl<S: Store> Core<S> {
    fn handoff_env(&mut self) -> (&mut crate::handoff::Handoff, Env<'_, S, impl Fn(NodeId) -> bool + '_>) {
        let grace_ms = self.aae.enabled().then(|| self.aae.grace_ms());
        let wall_ms = self.wall_ms();
        let detector = &self.detector;
        let env = Env {
            me: self.cfg.me,
            hints: &mut self.hints,
            store: &mut self.store,
            ring: &self.ring,
            is_up: move |n| detector.is_up(n),
            now_ms: self.now_ms,
            wall_ms,
            grace_ms,
        };
        (&mut self.handoff, env)
    }

    pub(super) fn handoff_round(&mut self) {
        let batches = {
            let (handoff, mut env) = self.handoff_env();
            handoff.round(&mut env)
        };
        for (to, batch) in batches {
            let op = self.id();
            let req = batch.request();
            self.handoff.sent(op, batch);
            self.ops.insert(op, Op::Handoff);
            self.send(op, to, req, HANDOFF_TIMEOUT_MS);
        }
    }

    pub(super) fn handoff_response(&mut self, op_id: OpId, result: Result<Response, Error>) {
        self.ops.remove(&op_id);
        let (handoff, mut env) = self.handoff_env();
        handoff.on_answer(op_id, &mut env, result);
    }
}
